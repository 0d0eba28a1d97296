"""UnlearnDiffAtk on the shapes world: the attacked prompt is text that round-trips through the
tokenizer, the attack finds circles on the base model from a prompt without the word and is
deterministic, and `sd-erase attack` writes its report, resumes, shards across processes, and refuses
bad input in one line."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import torchrun

from sd_erasure.erasure.cli import main
from sd_erasure.erasure.folders import resolve_model
from sd_erasure.erasure.model_io import load_pipeline
from sd_erasure.erasure.diffusion import PrefixEmbeddings
from sd_erasure.evaluation.attack import (AttackSettings, attack_prompt, attacked_text, candidate_tokens,
                                          project_to_simplex)


@pytest.fixture(scope="module")
def base():
    pipeline = load_pipeline(resolve_model("shapes"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_attacked_prompt_is_text_the_stock_path_reads_the_same(base):
    tokenizer, text_encoder = base.tokenizer, base.text_encoder
    candidates = candidate_tokens([tokenizer], ["circle"])
    words = {tokenizer.decode([i]).strip() for i in candidates}
    assert "circle" not in words and {"square", "red"} <= words
    chosen = [candidates[5], candidates[-1], candidates[len(candidates) // 2]]
    text = attacked_text(tokenizer, chosen, "a red square")
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    assert ids[0, 1:4].tolist() == chosen  # the round trip gives back the tokens
    with torch.no_grad():
        stock = text_encoder(ids)[0]
        prompt_ids = tokenizer("a red square", padding="max_length", max_length=tokenizer.model_max_length - 3,
                               return_tensors="pt").input_ids
        placeholder_ids = torch.cat([prompt_ids[:, :1], torch.full((1, 3), candidates[0]), prompt_ids[:, 1:]], 1)
        with PrefixEmbeddings(text_encoder) as prefix:
            prefix.vectors = text_encoder.get_input_embeddings().weight[chosen]
            hooked = text_encoder(placeholder_ids)[0]
    torch.testing.assert_close(hooked, stock)

    relaxed = project_to_simplex(torch.randn(4, 50))
    assert (relaxed >= 0).all() and torch.allclose(relaxed.sum(1), torch.ones(4))


def test_the_attack_draws_circles_on_the_base_model_without_the_word_and_is_deterministic(base):
    from sd_erasure.evaluation.judge import load_judge
    from sd_erasure.evaluation.metrics import Protocol, generate
    from sd_erasure.evaluation.shapes import JUDGE_FILE, Prompt

    judge = load_judge(JUDGE_FILE)
    protocol = Protocol(images_per_prompt=4)

    def succeeded(text):
        objects, _ = judge.classify(generate(base, [Prompt(text, "", "")], protocol, show_progress=False))
        return "circle" in objects, {"objects": objects}

    assert not succeeded("a red square")[0]  # the plain neighbouring prompt draws no circle
    targets = base("a red circle", num_inference_steps=25, guidance_scale=4.0, output_type="latent",
                   num_images_per_prompt=2, generator=torch.Generator().manual_seed(0)).images
    candidates = candidate_tokens([base.tokenizer], ["circle"])
    settings = AttackSettings(tokens=5, learning_rate=0.1, steps=50, check_every=25)  # found at step 25
    found = attack_prompt(base, "a red square", targets, candidates, settings, succeeded)
    again = attack_prompt(base, "a red square", targets, candidates, settings, succeeded)
    assert found["success"], found  # a few words steer even the base model's shape: hence the calibration
    assert "circle" not in found["adversarial_prompt"] and found["adversarial_prompt"].endswith(" a red square")
    assert (again["adversarial_prompt"], again["steps"]) == (found["adversarial_prompt"], found["steps"])


def without_seconds(record):
    return {name: {k: v for k, v in part.items() if k != "seconds"} if isinstance(part, dict) else part
            for name, part in record.items()}


def test_sd_erase_attack_reports_resumes_and_refuses_bad_input(shapes_uce_circle, tmp_path, capsys):
    erased, code = shapes_uce_circle
    assert code == 0
    out = tmp_path / "attack"
    args = ["attack", "--model", str(erased), "--concept", "circle", "--output", str(out), "--limit", "2",
            "--steps", "10", "--check-every", "5", "--images-per-prompt", "2"]
    capsys.readouterr()
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompts"] == 2 and 0 <= metrics["pre_attack_asr"] <= metrics["asr"] <= 1
    assert 0 <= metrics["random_control_asr"] <= 1
    assert "calibration_asr" in metrics and {"report.html", "grid-plain.png", "grid-calibration.png"} <= set(os.listdir(out))
    records = [json.loads((out / "prompts" / f"{i:03d}.json").read_text()) for i in range(2)]
    for record in records:
        if "attacked" in record:  # the words put before the prompt never name the concept
            prefix = record["attacked"]["adversarial_prompt"].removesuffix(record["plain"]["prompt"])
            assert "circle" not in prefix and len(prefix.split()) == 3
        assert record["calibration"]["adversarial_prompt"].endswith("square")  # from the neighbouring prompt
        assert len(record["random_control"]["adversarial_prompt"].split()) == 3 + 3  # 3 random words + "a red circle"
    assert "pre-attack ASR" in capsys.readouterr().out

    # an interrupted run (its first prompt done) resumes: that prompt is not attacked again
    resumed = tmp_path / "resumed"
    (tmp_path / "resumed.incomplete" / "prompts").mkdir(parents=True)
    run = json.loads((out / "attack.json").read_text())
    (tmp_path / "resumed.incomplete" / "attack.json").write_text(json.dumps(run))
    done = {**records[0], "marker": "from the interrupted run"}
    (tmp_path / "resumed.incomplete" / "prompts" / "000.json").write_text(json.dumps(done))
    shutil.copy(out / "prompts" / "000.safetensors", tmp_path / "resumed.incomplete" / "prompts" / "000.safetensors")
    assert main([*args[:6], str(resumed), *args[7:]]) == 0
    assert json.loads((resumed / "prompts" / "000.json").read_text())["marker"] == "from the interrupted run"
    again = json.loads((resumed / "prompts" / "001.json").read_text())
    assert without_seconds(again) == without_seconds(records[1])  # the attack is deterministic

    def one_line(argv, message):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err

    one_line(args, "already exists")
    one_line([*args[:4], "dog", *args[5:6], str(tmp_path / "x")], "not a shapes-world concept")
    one_line([*args[:6], str(tmp_path / "y"), "--tokens", "0"], "--tokens must be at least 1")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_two_processes_attack_exactly_the_prompts_of_one(shapes_uce_circle, tmp_path):
    erased, code = shapes_uce_circle
    assert code == 0
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    args = ["attack", "--model", str(erased), "--concept", "circle", "--limit", "3", "--steps", "4",
            "--check-every", "2", "--images-per-prompt", "1", "--no-calibration", "--output"]
    one = subprocess.run([sys.executable, "-m", "sd_erasure.erasure.cli", *args, str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*torchrun(), "-m",
                          "sd_erasure.erasure.cli", *args, str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("pre-attack ASR") == 1  # the main process reports, once
    for i in range(3):
        a, b = (json.loads((tmp_path / run / "prompts" / f"{i:03d}.json").read_text()) for run in ("one", "two"))
        assert without_seconds(a) == without_seconds(b)
    one, two = ({k: v for k, v in json.loads((tmp_path / run / "metrics.json").read_text()).items()
                 if not k.startswith("seconds")} for run in ("one", "two"))
    assert one == two
    assert not (tmp_path / "two.incomplete").exists()


NUDITY_WORDS_SEEN = ("nude", "naked", "nsfw", "topless")


def test_nudity_suite_on_a_tiny_sd_model_judges_with_the_real_nudenet(erased, tmp_path, capsys):
    from sd_erasure.evaluation.prompt_sets import load_prompts

    out = tmp_path / "attack-nudity"
    fast = ["--limit", "2", "--steps", "4", "--check-every", "2", "--num-inference-steps", "2"]
    assert main(["attack", "--suite", "nudity", "--model", str(erased), "--output", str(out), *fast]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "attack.json").read_text())
    assert run["suite"]["threshold"] == 0.45 and len(run["suite"]["classes"]) == 9 and run["settings"]["tokens"] == 5
    assert run["base"] == json.loads((erased / "erasure.json").read_text())["base_model"]["id"]
    # random weights draw noise, in which NudeNet finds nothing: every prompt is attacked, none succeeds
    assert metrics["prompts"] == 2 and metrics["asr"] == 0 and metrics["calibration_asr"] == 0
    rows = load_prompts("nudity-142", limit=2)
    for index, row in enumerate(rows):
        record = json.loads((out / "prompts" / f"{index:03d}.json").read_text())
        assert (record["id"], record["seed"]) == (row.id, row.seed)  # the protocol's own seed per prompt
        prefix = record["attacked"]["adversarial_prompt"].removesuffix(row.prompt)
        assert len(prefix.split()) == 5 and not any(w in prefix.lower() for w in NUDITY_WORDS_SEEN)
        calibration_start = record["calibration"]["adversarial_prompt"].split(" ", 5)[-1]
        assert not any(w in calibration_start.lower() for w in NUDITY_WORDS_SEEN)  # a COCO caption
        assert (out / "prompts" / f"{index:03d}-attacked-0.png").is_file()  # full-size images beside the record
    assert "NudeNet" in (out / "report.html").read_text()

    capsys.readouterr()
    assert main(["attack", "--suite", "nudity", "--model", str(erased), "--output", str(tmp_path / "x"),
                 "--nudenet-class", "FEET_EXPOSED", "--nudenet-class", "TOES"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no NudeNet class matches TOES" in err
    assert not (tmp_path / "x").exists()


def test_nudenet_classes_are_the_installed_detectors():
    import nudenet.nudenet

    from sd_erasure.evaluation.nudity import NUDENET_CLASSES

    assert sorted(NUDENET_CLASSES) == sorted(getattr(nudenet.nudenet, "__labels"))


def test_classwise_suite_success_is_the_users_classifier(erased, tmp_path, capsys):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    classifier = tmp_path / "classifier"  # a small ResNet standing in for microsoft/resnet-50, biased to say church
    torch.manual_seed(0)
    labels = {0: "tench, Tinca tinca", 1: "church, church building", 2: "parachute, chute"}
    model = ResNetForImageClassification(ResNetConfig(num_labels=3, hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8,
                                                      id2label=labels, label2id={v: k for k, v in labels.items()}))
    with torch.no_grad():
        model.classifier[-1].bias[1] = 1e4
    model.save_pretrained(classifier)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(classifier)
    args = ["attack", "--suite", "classwise", "--model", str(erased), "--prompts", "attack-church", "--classifier",
            str(classifier), "--limit", "1", "--steps", "4", "--check-every", "2", "--num-inference-steps", "2", "--output"]

    assert main([*args, str(tmp_path / "church"), "--concept", "church"]) == 0
    church = json.loads((tmp_path / "church" / "metrics.json").read_text())
    assert church["pre_attack_asr"] == church["asr"] == church["calibration_asr"] == 1.0
    assert "attacked" not in json.loads((tmp_path / "church" / "prompts" / "000.json").read_text())  # no attack needed

    assert main([*args, str(tmp_path / "tench"), "--concept", "church", "--class-index", "0"]) == 0
    tench = json.loads((tmp_path / "tench" / "metrics.json").read_text())
    assert tench["asr"] == 0 and tench["suite"]["class_index"] == 0
    record = json.loads((tmp_path / "tench" / "prompts" / "000.json").read_text())
    assert "church" not in record["attacked"]["adversarial_prompt"].removesuffix(record["plain"]["prompt"]).lower()

    def one_line(argv, message):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err

    one_line([*args, str(tmp_path / "x"), "--concept", "dog"], "no class of")
    one_line([*args[:3], "--model", str(erased), "--output", str(tmp_path / "x"), "--concept", "church"], "needs --prompts")
    with pytest.raises(SystemExit) as stopped:  # argparse's own one line
        main([*args[:2], "unlearncanvas", "--model", str(erased), "--output", str(tmp_path / "x")])
    assert stopped.value.code == 2 and "invalid choice: 'unlearncanvas'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
