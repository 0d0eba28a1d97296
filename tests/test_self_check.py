"""The self-check's choices (prompts, next round) and --until-erased on a checkpoint nobody tuned for."""

import json
import os

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
    assert (narrower.scope, narrower.learning_rate) == ("xattn", moved.learning_rate)  # erased, retain drifted
    assert next_round(narrower, verdict(0.2), tried) is None  # passed

    esd = EsdConfig(model="m", concept="c", learning_rate=1e-4, train_method="x")  # already narrow: between the bounds
    tried = {}
    failed = next_round(esd, verdict(0.8), tried)
    between = next_round(failed, verdict(0.05, kept=False), tried)
    assert between.learning_rate == pytest.approx((1e-4 * 3e-4) ** 0.5)
    assert next_round(esd, verdict(None), {}) is None  # the check cannot tell: nothing to adapt to


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
    out = tmp_path / "defaults"
    capsys.readouterr()
    assert erase_cli("--model", SECOND_CHECKPOINT, "--concept", "circle", "--output", out, "--until-erased",
                     "--num-images", "32", "--synthesis-steps", "10") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("not checked: the model's tokenizer does not know 'photo'") and "--forget-prompt" in last
    record = json.loads((out / "erasure.json").read_text())
    assert record["self_check"]["unknown_words"] == ["photo"] and len(record["rounds"]) == 1  # nothing to adapt to


def test_until_erased_runs_rounds_from_the_base_weights_and_records_them(tmp_path):
    words = []
    for colour in ("red", "blue", "green"):
        words += ["--forget-prompt", f"a {colour} circle", "--misaligned-prompt", f"a {colour} square"]
    for prompt in ("a red square", "a yellow star", "a purple triangle", "a blue cross"):
        words += ["--retain-prompt", prompt]
    out = tmp_path / "rounds"
    code = erase_cli("--model", SECOND_CHECKPOINT, "--concept", "circle", "--output", out, "--until-erased",
                     "--max-rounds", "3", "--num-images", "64", "--synthesis-steps", "25", *words)
    record = json.loads((out / "erasure.json").read_text())
    rates = [r["learning_rate"] for r in record["rounds"]]
    assert rates[0] == 1e-5 and all(later > earlier for earlier, later in zip(rates, rates[1:]))  # raised while not erased
    assert len(rates) == 3 or record["self_check"]["erased"]
    assert code == (0 if record["self_check"]["erased"] else 3)
    assert record["final_settings"]["learning_rate"] == rates[-1]
    assert (out / "saliency_mask.safetensors").is_file()  # the last round's side files are the output's
    assert not any(name.startswith("round-") or name == "rounds.json" for name in os.listdir(out))
