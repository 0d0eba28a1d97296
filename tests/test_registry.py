"""One package, one method registry: a method registered anywhere reaches the CLI, `erase()` and
the card; cheap bad input is refused before torch loads; the installed names shadow nothing;
the wheel holds the data; model profiles fill unset fields and say so, and one can be written from
a caption template."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import pytest
import torch

from conftest import REPO, unet_weights

from sd_erasure import EraseConfig, erase, register_method
from sd_erasure.erasure.config import option
from sd_erasure.erasure.registry import unregister



@dataclass
class ToyConfig(EraseConfig):
    """A method that exists only in this test: it scales the UNet's output bias."""

    scale: float = option(0.5, help="factor applied to the UNet's conv_out bias", group="toy")


def toy_erase_pipeline(pipeline, config, session):
    with torch.no_grad():
        pipeline.unet.conv_out.bias.mul_(config.scale)
    return {"prompts": {}, "summary": [["toy edit", f"conv_out bias times {config.scale}"]]}, {}


@pytest.fixture
def toy_method():
    method = register_method("toy", ToyConfig, toy_erase_pipeline, title="Toy erasure (a test's method)",
                             citation="@misc{toy2026, title = {A toy}}")
    yield method
    unregister("toy")


def test_a_method_registered_in_a_test_reaches_help_erase_and_card(toy_method, tiny_sd, tmp_path, capsys):
    from sd_erasure.erasure.cli import main
    from sd_erasure.erasure.hub import build_model_card

    with pytest.raises(SystemExit):
        main(["erase", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "--scale SCALE" in help_text and "factor applied to the UNet's conv_out bias (default: 0.5) [toy]" in help_text
    assert "toy: Toy erasure" in help_text

    out = tmp_path / "toy-out"
    assert main(["erase", "--method", "toy", "--model", str(tiny_sd), "--concept", "thing", "--output", str(out),
                 "--scale", "0.25"]) == 0
    base, erased = unet_weights(tiny_sd), unet_weights(out)
    assert torch.equal(erased["conv_out.bias"], base["conv_out.bias"] * 0.25)
    assert all(torch.equal(base[k], erased[k]) for k in base if k != "conv_out.bias")
    record = json.loads((out / "erasure.json").read_text())
    assert record["method"] == "toy" and record["hyperparameters"]["scale"] == 0.25
    assert record["settings_source"]["scale"] == "user"

    card = str(build_model_card(str(out), "someone/toy", license="mit"))
    assert "Toy erasure (a test's method)" in card and "toy2026" in card

    capsys.readouterr()
    assert main(["erase", "--method", "toy", "--model", str(tiny_sd), "--concept", "thing", "--output",
                 str(tmp_path / "other"), "--mask-ratio", "0.5"]) == 2
    assert "--mask-ratio is an option of salun, salun-soft, not of --method toy" in capsys.readouterr().err


def test_a_duplicate_method_name_is_an_error(toy_method):
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_method("toy", ToyConfig, toy_erase_pipeline, title="again", citation="")


def test_library_messages_name_fields_and_the_cli_flags(tiny_sd, tmp_path, capsys):
    from sd_erasure import EraseError, SalUnConfig
    from sd_erasure.erasure.cli import main

    with pytest.raises(EraseError, match=r"^mask_ratio 1.5 is outside \(0, 1\]"):
        erase(SalUnConfig(model=str(tiny_sd), concept="x", output_dir=str(tmp_path / "o"), mask_ratio=1.5))
    assert main(["erase", "--model", str(tiny_sd), "--concept", "x", "--output", str(tmp_path / "o"),
                 "--mask-ratio", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("sd-erase: error: --mask-ratio 1.5 is outside (0, 1]")


# Runs the CLI in a fresh interpreter and reports whether torch was imported before it answered.
CHEAP_RUN = """
import sys
from sd_erasure.erasure.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
print(code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("case", ["negative steps", "existing output", "unwritable output", "option of another method",
                                  "unknown concept of a closed vocabulary", "a 300-word concept", "a concept listed twice",
                                  "attack: unknown concept", "attack: no tokens"])
def test_cheap_bad_input_is_one_line_before_torch_loads(case, tmp_path):
    existing = tmp_path / "mine"
    existing.mkdir()
    out = str(tmp_path / "out")
    args, expected = {
        "negative steps": (["--model", "shapes", "--concept", "circle", "--output", out, "--steps", "-3"],
                           "--steps must be positive, got -3"),
        "existing output": (["--model", "shapes", "--concept", "circle", "--output", str(existing)],
                            "already exists: choose another --output, or pass --overwrite"),
        # A read-only file system cannot be mounted in a test; /sys refuses new folders the same way.
        "unwritable output": (["--model", "shapes", "--concept", "circle", "--output", "/sys/sd-erase-out"],
                              "cannot write --output '/sys/sd-erase-out': Operation not permitted"),
        "option of another method": (["--method", "uce", "--model", "shapes", "--concept", "circle", "--output", out,
                                      "--mask-ratio", "0.5"], "--mask-ratio is an option of salun, salun-soft, not of"),
        "unknown concept of a closed vocabulary": (["--method", "uce", "--model", "shapes", "--concept", "dog",
                                                    "--output", out], "--concept 'dog' is not a concept of this model"),
        "a 300-word concept": (["--model", "shapes", "--concept", "word " * 300, "--output", out],
                               "is not a concept of this model"),
        "a concept listed twice": (["--model", "shapes", "--concept", "circle", "--concept", "circle", "--output", out],
                                   "--concept 'circle' is listed twice"),
        "attack: unknown concept": (["--model", "shapes", "--concept", "dog", "--output", out],
                                    "'dog' is not a shapes-world concept"),
        "attack: no tokens": (["--model", "shapes", "--concept", "circle", "--output", out, "--tokens", "0"],
                              "--tokens must be at least 1"),
    }[case]
    command = "attack" if case.startswith("attack") else "erase"
    done = subprocess.run([sys.executable, "-c", CHEAP_RUN, command, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    err = done.stderr.strip()
    assert done.stdout.split() == ["2", "False"], (done.stdout, err)  # exit 2, and torch never imported
    assert len(err.splitlines()) == 1 and expected in err and len(err) < 400, err
    assert not os.path.exists(out) and not os.path.exists(out + ".incomplete")
    assert os.listdir(existing) == []


def test_installed_names_neither_shadow_nor_are_shadowed(tmp_path):
    # a research folder with its own evaluation/ package, as many have
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "__init__.py").write_text("OURS = True\n")
    script = ("import evaluation; assert evaluation.OURS\n"
              "from sd_erasure.evaluation.prompt_sets import load_prompts\n"
              "assert len(load_prompts('nudity-142')) == 142\n"
              "import importlib.util; assert importlib.util.find_spec('erasure') is None\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
    demo_help = subprocess.run([sys.executable, "-m", "sd_erasure.erasure.cli", "demo", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    assert demo_help.returncode == 0 and "--concept" in demo_help.stdout, demo_help.stderr


def test_the_wheel_holds_prompts_models_and_cards_and_runs_installed(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sd_erasure-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"sd_erasure", wheel.name.split("-py")[0] + ".dist-info"}
    for expected in ("evaluation/prompts/nudity_142.csv", "evaluation/prompts/i2p_4703.csv",
                     "evaluation/prompts/coco_10k.csv", "evaluation/prompts/SOURCES.md",
                     "evaluation/assets/shapes-judge.safetensors", "evaluation/assets/shapes-sd/model_index.json",
                     "evaluation/assets/shapes-sd/sd_erasure_profile.json",
                     "evaluation/assets/shapes-sd/unet/diffusion_pytorch_model.safetensors",
                     "hub_cards/model_card.md", "erasure/cli.py"):
        assert f"sd_erasure/{expected}" in names, expected

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy comes before the editable one
    script = ("import os, sd_erasure\n"
              f"assert sd_erasure.__file__.startswith({str(site)!r}), sd_erasure.__file__\n"
              "from sd_erasure.evaluation.prompt_sets import load_prompts\n"
              "assert len(load_prompts('nudity-142')) == 142\n"
              "from sd_erasure.erasure.folders import resolve_model\n"
              f"assert resolve_model('shapes').path.startswith({str(site)!r})\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
    evaluate_help = subprocess.run([sys.executable, "-m", "sd_erasure.erasure.cli", "evaluate", "--suite", "nudity",
                                    "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert evaluate_help.returncode == 0 and "nudity-142" in evaluate_help.stdout


@pytest.fixture
def profiled(tiny_sd, tmp_path):
    """A user's model folder that carries its own profile."""
    folder = tmp_path / "profiled"
    shutil.copytree(tiny_sd, folder)
    profile = {"profile_format": 1, "tags": ["my-world"],
               "methods": {"salun": {"learning_rate": 0.002, "scope": "xattn"}},
               "concepts": {"thing": {"forget_prompts": ["a drawing of a thing"], "erase_concepts": ["thing"]}}}
    (folder / "sd_erasure_profile.json").write_text(json.dumps(profile))
    return folder


def test_a_model_profile_fills_unset_fields_and_erasure_json_says_where_each_came_from(profiled, tmp_path):
    from sd_erasure import SalUnConfig

    out = tmp_path / "out"
    record = erase(SalUnConfig(model=str(profiled), concept="thing", output_dir=str(out), num_images=16,
                               synthesis_steps=4, steps=6, batch_size=4, scope="full"), show_progress=False).record
    hp, source = record["hyperparameters"], record["settings_source"]
    assert (hp["learning_rate"], source["learning_rate"]) == (0.002, "model profile")
    assert (hp["forget_prompts"], source["forget_prompts"]) == (["a drawing of a thing"], "model profile")
    assert (hp["scope"], source["scope"]) == ("full", "user")  # the user's value wins over the profile's
    assert (hp["retain_prompts"], source["retain_prompts"]) == (["a photo"], "official default")
    assert (out / "sd_erasure_profile.json").is_file()  # the erased model is still a model of that kind


def test_a_closed_vocabulary_and_a_bad_profile_are_refused_in_one_line(profiled, tmp_path):
    from sd_erasure import EraseError, SalUnConfig

    profile_file = profiled / "sd_erasure_profile.json"
    profile = json.loads(profile_file.read_text())
    profile_file.write_text(json.dumps({**profile, "closed_vocabulary": True}))
    with pytest.raises(EraseError, match="concept 'cat' is not a concept of this model: its profile"):
        erase(SalUnConfig(model=str(profiled), concept="cat", output_dir=str(tmp_path / "o")))
    profile_file.write_text(json.dumps({**profile, "methods": {"salun": {"steps": 5}}}))
    with pytest.raises(EraseError, match="sets steps for salun, which its config cannot take from a profile"):
        erase(SalUnConfig(model=str(profiled), concept="thing", output_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_a_profile_gives_a_method_that_trains_a_lora_its_own_settings(profiled):
    from sd_erasure import EraseError, SalUnConfig
    from sd_erasure.erasure.folders import resolve_model
    from sd_erasure.erasure.job import plan_erase

    profile_file = profiled / "sd_erasure_profile.json"
    profile = json.loads(profile_file.read_text())
    profile["methods"]["salun"]["adapter_lora"] = {"learning_rate": 0.02}
    profile_file.write_text(json.dumps(profile))
    base = resolve_model(str(profiled), None, False)
    for adapter, rate in (("full", 0.002), ("lora", 0.02)):
        plan = plan_erase(SalUnConfig(model=str(profiled), concept="thing", adapter=adapter), base)
        assert (plan.config.learning_rate, plan.sources["learning_rate"]) == (rate, "model profile")
        assert plan.config.scope == "xattn"  # the method's other settings hold for its LoRA too
    user = plan_erase(SalUnConfig(model=str(profiled), concept="thing", adapter="lora", learning_rate=1e-4), base)
    assert user.config.learning_rate == 1e-4  # the user's value still wins
    profile["methods"]["salun"]["adapter_lora"] = {"steps": 5}
    profile_file.write_text(json.dumps(profile))
    with pytest.raises(EraseError, match="sets steps for salun, which its config cannot take from a profile"):
        plan_erase(SalUnConfig(model=str(profiled), concept="thing"), resolve_model(str(profiled), None, False))


def test_the_bundled_profile_is_the_worlds_own(tmp_path):
    from sd_erasure import BUNDLED_MODELS
    from sd_erasure.evaluation.shapes import world_profile

    with open(os.path.join(BUNDLED_MODELS["shapes"], "sd_erasure_profile.json")) as f:
        assert json.load(f) == world_profile()


def test_a_profile_written_from_a_caption_template_gives_every_concept_its_prompts(tiny_sd, tmp_path, capsys):
    from sd_erasure.erasure.cli import main

    folder = tmp_path / "mine"
    shutil.copytree(tiny_sd, folder)
    args = ["profile", "--model", str(folder), "--template", "{animal} sleeping on a {place}",
            "--slot", "animal=cat/kitten,dog", "--slot", "place=sofa,bed,rug"]
    assert main(args) == 0
    concepts = json.loads((folder / "sd_erasure_profile.json").read_text())["concepts"]
    assert sorted(concepts) == ["bed", "cat", "dog", "kitten", "rug", "sofa"]
    cat = concepts["kitten"]  # a synonym erases its whole concept
    assert cat["forget_prompts"] == ["cat sleeping on a sofa", "cat sleeping on a bed", "cat sleeping on a rug",
                                     "kitten sleeping on a sofa", "kitten sleeping on a bed", "kitten sleeping on a rug"]
    assert cat["misaligned_prompts"][3] == "dog sleeping on a sofa"  # the slot's next concept, the rest kept
    assert cat["retain_prompts"] == ["dog sleeping on a sofa", "dog sleeping on a bed", "dog sleeping on a rug"]
    # text edits: every caption prefix ending at a slot word; those holding the concept are erased
    assert cat["erase_concepts"][:2] == ["cat", "cat sleeping on a bed"] and "dog" in cat["preserve_concepts"]
    rug = concepts["rug"]
    assert dict(zip(rug["forget_prompts"], rug["misaligned_prompts"]))["kitten sleeping on a rug"] == \
        "kitten sleeping on a sofa"  # the last concept steers to the first
    assert "cat sleeping on a rug" in rug["erase_concepts"] and "cat" in rug["preserve_concepts"]

    capsys.readouterr()
    assert main(args) == 2 and "already exists: pass --overwrite" in capsys.readouterr().err
    assert main([*args[:-2], "--slot", "place"]) == 2 and "is not NAME=WORD" in capsys.readouterr().err
    assert main([*args, "--slot", "colour=red", "--overwrite"]) == 2
    assert "must name each slot once: animal, place, colour" in capsys.readouterr().err
    assert main(["profile", "--model", str(tmp_path), "--template", "a {x}", "--slot", "x=y"]) == 2
    assert "not a diffusers model folder" in capsys.readouterr().err
