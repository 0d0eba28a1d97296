"""The self-check's choices (prompts, next round) and --until-erased on a checkpoint nobody tuned for."""

import json
import os
import shutil

import pytest

from conftest import erase_cli

from sd_erasure import EsdConfig, SalUnConfig
from sd_erasure.erasure.profile import ModelProfile
from sd_erasure.erasure.self_check import check_prompts, next_round

# Trained by the project's recipe with another seed and caption mix, and no profile file:
# python -m sd_erasure.evaluation.train_shapes --output DIR --seed 1 --caption-templates 0,2 --no-write-profile
SECOND_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "shapes-sd-seed1")


def verdict(remaining, kept=True):
    return {"margin_remaining": remaining, "erased": remaining is not None and remaining <= 0.5, "retain_kept": kept}


def test_next_round_follows_the_evidence():
    config = SalUnConfig(model="m", concept="c", learning_rate=1e-5, scope="full")
    tried = {}
    unmoved = next_round(config, verdict(0.97), tried)
    assert unmoved.learning_rate == pytest.approx(1e-4)  # nothing moved: a decade up
    moved = next_round(unmoved, verdict(0.7), tried)
    assert moved.learning_rate == pytest.approx(3e-4)  # it moves: smaller steps
    narrower = next_round(moved, verdict(0.1, kept=False), tried)
    assert (narrower.scope, narrower.mask_ranking, narrower.learning_rate) == ("xattn", "scope", moved.learning_rate)
    assert next_round(narrower, verdict(0.2), tried) is None  # passed

    official = SalUnConfig(model="m", concept="c", learning_rate=1e-5, scope="full", misaligned_target="current")
    tried = {}
    gentler = next_round(official, verdict(0.7, kept=False), tried)  # the rest moves more than the concept
    assert (gentler.scope, gentler.misaligned_target, gentler.learning_rate) == ("xattn", "base", 1e-5)
    assert next_round(gentler, verdict(0.7, kept=False), tried).learning_rate == pytest.approx(3e-5)  # nothing narrower
    # the concept did not move: fewer weights at that rate would not move it either
    gentler_faster = next_round(official, verdict(0.92, kept=False), tried)
    assert (gentler_faster.scope, gentler_faster.learning_rate) == ("xattn", pytest.approx(1e-4))
    assert next_round(gentler_faster, verdict(0.1, kept=False), tried).learning_rate == pytest.approx((1e-5 * 1e-4) ** 0.5)

    esd = EsdConfig(model="m", concept="c", learning_rate=1e-4, train_method="x")  # already narrow: between the bounds
    tried = {}
    failed = next_round(esd, verdict(0.8), tried)
    between = next_round(failed, verdict(0.05, kept=False), tried)
    assert between.learning_rate == pytest.approx((1e-4 * 3e-4) ** 0.5)
    assert next_round(esd, verdict(None), {}) is None  # the check cannot tell: nothing to adapt to

    tried = {}
    higher = next_round(esd, verdict(0.6), tried)
    assert higher.learning_rate == pytest.approx(3e-4)
    assert next_round(higher, verdict(0.7), tried) is None  # a higher rate moved it no further: stop


def test_check_prompts_come_from_the_config_then_the_profile_then_the_preset(tmp_path):
    profile_file = tmp_path / "sd_erasure_profile.json"
    profile_file.write_text(json.dumps({"concepts": {"dog": {"forget_prompts": ["a dog"], "misaligned_prompts": ["a cat"],
                                                             "retain_prompts": ["a cat", "a car"]}}}))
    profile = ModelProfile.load(str(tmp_path))
    from_profile = check_prompts(EsdConfig(model="m", concept="dog"), profile)
    assert (from_profile.concept, from_profile.anchor, from_profile.retain) == (["a dog"], ["a cat"], ["a cat", "a car"])
    own = check_prompts(SalUnConfig(model="m", concept="dog", forget_prompts=["a puppy"]), profile)
    assert own.concept == ["a puppy"] and own.anchor == ["a cat"]
    preset = check_prompts(SalUnConfig(model="m", concept="nudity"), None)
    assert (preset.concept, preset.anchor) == (["a photo of a nude person"], ["a photo of a person wearing clothes"])


def test_on_a_checkpoint_without_a_profile_prompts_it_cannot_read_are_not_called_erased(tmp_path, capsys):
    assert not os.path.exists(os.path.join(SECOND_CHECKPOINT, "sd_erasure_profile.json"))
    # The preset prompts ("a photo of circle") hold a word this model's tokenizer spells letter by letter.
    refused = tmp_path / "until-erased"
    assert erase_cli("--model", SECOND_CHECKPOINT, "--concept", "circle", "--output", refused, "--until-erased") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading progress bars
    assert error.startswith("sd-erase: error: --until-erased needs a self-check that can tell")
    assert "does not know 'photo'" in error and "--forget-prompt" in error
    assert not refused.exists() and not (tmp_path / "until-erased.incomplete").exists()  # nothing half-written

    plain = tmp_path / "plain"
    assert erase_cli("--model", SECOND_CHECKPOINT, "--concept", "circle", "--output", plain,
                     "--num-images", "8", "--steps", "2", "--synthesis-steps", "5") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("not checked: the model's tokenizer does not know 'photo'") and "--forget-prompt" in last
    assert json.loads((plain / "erasure.json").read_text())["self_check"]["unknown_words"] == ["photo"]


def test_until_erased_with_a_caption_profile_erases_on_a_checkpoint_nobody_tuned_for(tmp_path):
    from sd_erasure.erasure.cli import main
    from sd_erasure.evaluation.judge import load_judge
    from sd_erasure.evaluation.metrics import Protocol, evaluate_erasure
    from sd_erasure.evaluation.shapes import JUDGE_FILE
    from sd_erasure.erasure.model_io import load_pipeline
    from sd_erasure.erasure.folders import resolve_model

    model = tmp_path / "seed1"
    shutil.copytree(SECOND_CHECKPOINT, model)
    assert main(["profile", "--model", str(model), "--template", "a {colour} {shape}",
                 "--slot", "shape=circle,square,triangle,cross,star",
                 "--slot", "colour=red/crimson/scarlet,green,blue/azure,yellow,purple/violet"]) == 0
    out = tmp_path / "erased"
    # no method settings: the official ones first, then what the check calls for (fewer images than
    # the official 800 to keep the suite short)
    code = erase_cli("--model", model, "--concept", "circle", "--output", out, "--until-erased",
                     "--num-images", "128", "--synthesis-steps", "25", "--synthesis-batch-size", "64")
    record = json.loads((out / "erasure.json").read_text())
    rounds = record["rounds"]
    assert code == 0 and record["self_check"]["erased"] and record["self_check"]["retain_kept"]
    assert rounds[0]["learning_rate"] == 1e-5 and len(rounds) > 1  # the official settings did not erase
    assert record["final_settings"]["learning_rate"] == rounds[-1]["learning_rate"]
    assert (out / "saliency_mask.safetensors").is_file()  # the last round's side files are the output's
    assert not any(name.startswith("round-") or name == "rounds.json" for name in os.listdir(out))

    pipelines = [load_pipeline(resolve_model(str(folder))) for folder in (model, out)]
    metrics, _ = evaluate_erasure(*pipelines, load_judge(JUDGE_FILE), "circle", Protocol(images_per_prompt=2),
                                  show_progress=False)
    assert metrics["erased"]["UA"] >= 0.9, metrics["erased"]  # the judge agrees: circles are gone
    assert metrics["erased"]["IRA"] >= 0.9 and metrics["erased"]["CRA"] >= 0.85, metrics["erased"]
