"""The shapes world: renderer, bundled judge and model, the training recipe, metrics and reports."""

import json
import os

import pytest
import torch

from conftest import erase_cli
from sd_erasure.evaluation.judge import accuracy, load_judge
from sd_erasure.evaluation.metrics import Protocol, prompt_fidelity, score
from sd_erasure.evaluation.shapes import (JUDGE_FILE, MODEL_DIR, OBJECTS, STYLES, dataset, prompts, style_words, world_concepts,
                               to_tensor)


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def test_renders_are_deterministic_by_seed():
    a, b, c = dataset(20, seed=5), dataset(20, seed=5), dataset(20, seed=6)
    assert torch.equal(to_tensor([s.image for s in a]), to_tensor([s.image for s in b]))
    assert not torch.equal(to_tensor([s.image for s in a]), to_tensor([s.image for s in c]))
    assert {s.object for s in dataset(400, seed=1)} == set(OBJECTS)


def test_prompts_cover_every_object_and_style_word():
    texts = [p.text for p in prompts()]
    assert len(texts) == len(OBJECTS) * sum(len(style_words(s)) for s in STYLES)
    assert "a crimson circle" in texts and "a azure star" in texts


def erase_prompts(concept):
    settings = world_concepts()[concept]
    return settings["forget_prompts"], settings["retain_prompts"], settings["misaligned_prompts"]


def test_erase_prompts_map_each_forget_prompt_to_the_next_concept():
    forget, retain, misaligned = erase_prompts("circle")
    assert all("circle" in p for p in forget) and not any("circle" in p for p in retain)
    assert ("a crimson circle", "a crimson square") in set(zip(forget, misaligned))
    forget, retain, misaligned = erase_prompts("red")
    assert {"a red star", "a crimson star", "a scarlet star"} <= set(forget)
    assert not any(w in p for p in retain for w in ("red", "crimson", "scarlet"))
    assert dict(zip(forget, misaligned))["a scarlet cross"] == "a green cross"


def test_bundled_judge_is_accurate_on_fresh_renders():
    judge = load_judge(JUDGE_FILE)
    assert os.path.getsize(JUDGE_FILE) <= 1_000_000
    result = accuracy(judge, dataset(1000, seed=424242, with_none=True))
    assert result["object"] >= 0.99 and result["style"] >= 0.99, result


def test_bundled_model_loads_with_plain_diffusers_and_follows_prompts():
    from diffusers import DiffusionPipeline

    assert folder_bytes(MODEL_DIR) <= 10_000_000
    pipeline = DiffusionPipeline.from_pretrained(MODEL_DIR)
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    fidelity = prompt_fidelity(pipeline, load_judge(JUDGE_FILE), Protocol(images_per_prompt=2, seed=7))
    assert fidelity["both"] >= 0.9, fidelity  # the recorded benchmark (8 per prompt) is >= 0.95


def test_score_counts_synonyms_and_none():
    prompt_list = [p for p in prompts() if p.object == "star"]  # 9 prompts, 3 of them red words
    objects = ["star"] * 9
    styles = ["none" if p.style == "red" else p.style for p in prompt_list]
    result = score(prompt_list, 1, objects, styles, "red")
    assert result["UA"] == 1.0 and result["UA_by_word"] == {"red": 1.0, "crimson": 1.0, "scarlet": 1.0}
    assert result["IRA"] == 1.0 and result["CRA"] == 1.0


def test_training_recipe_runs_at_a_toy_step_count(tmp_path):
    from diffusers import DiffusionPipeline
    from sd_erasure.evaluation.train_shapes import ShapesTrainingConfig, train

    config = ShapesTrainingConfig(num_images=128, judge_samples=512, judge_epochs=1, vae_steps=2, vae_batch_size=8,
                                  unet_steps=2, unet_batch_size=8, warmup_steps=1, fidelity_images_per_prompt=1,
                                  image_tower_samples=256, image_tower_steps=2, image_tower_batch_size=32)
    report = train(str(tmp_path), config, progress=False)
    assert set(report["seconds"]) == {"judge", "vae", "text_encoder_unet"}
    assert (tmp_path / "shapes-clip" / "config.json").is_file() and report["image_towers"]["shapes-clip"]
    assert 0 <= report["prompt_fidelity"]["both"] <= 1
    pipeline = DiffusionPipeline.from_pretrained(str(tmp_path / "shapes-sd"))
    assert pipeline.unet.config.cross_attention_dim == 64
    profile = json.loads((tmp_path / "shapes-sd" / "sd_erasure_profile.json").read_text())
    assert profile["closed_vocabulary"] and set(profile["concepts"]) >= {"circle", "red", "crimson"}
    assert (tmp_path / "shapes-judge.safetensors").is_file()


def test_erasing_circle_raises_ua_and_keeps_the_rest(tmp_path):
    """A short SalUn run on the bundled model (the full numbers come from the demo benchmark)."""
    from sd_erasure.evaluation.suite import evaluate_shapes

    out = tmp_path / "no-circle"
    assert erase_cli("--model", "shapes", "--concept", "circle", "--output", out, "--num-images", "128",
                     "--synthesis-steps", "25") == 0
    record = json.loads((out / "erasure.json").read_text())
    assert record["prompts"]["misaligned"][0].endswith("square")
    metrics = evaluate_shapes(str(out), "circle", str(tmp_path / "report"), protocol=Protocol(images_per_prompt=2),
                              show_progress=False)
    base, erased = metrics["base"], metrics["erased"]
    assert erased["UA"] >= base["UA"] + 0.5, metrics
    assert record["self_check"]["erased"] is (erased["UA"] >= 0.9), (record["self_check"], metrics)
    assert erased["IRA"] >= base["IRA"] - 0.1 and erased["CRA"] >= base["CRA"] - 0.1, metrics
    report = tmp_path / "report"
    assert {"metrics.json", "report.html", "grid-base.png", "grid-erased.png"} <= set(os.listdir(report))
    assert 'src="grid-erased.png"' in (report / "report.html").read_text()


def test_an_erase_that_changes_nothing_says_not_erased_and_exits_3(tmp_path, capsys):
    from safetensors.torch import load_file

    from sd_erasure import BUNDLED_MODELS
    from sd_erasure.erasure.self_check import EXIT_NOT_ERASED

    out = tmp_path / "dry-run"
    capsys.readouterr()
    code = erase_cli("--model", "shapes", "--concept", "circle", "--output", out, "--num-images", "64",
                     "--learning-rate", "0", "--steps", "10")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == EXIT_NOT_ERASED == 3 and last.startswith("NOT erased: concept margin") and "--learning-rate" in last
    check = json.loads((out / "erasure.json").read_text())["self_check"]  # the output is still written
    assert check["erased"] is False and check["margin_remaining"] == pytest.approx(1.0)
    weights = "unet/diffusion_pytorch_model.safetensors"
    base, kept = load_file(os.path.join(BUNDLED_MODELS["shapes"], weights)), load_file(out / weights)
    assert all(torch.equal(base[k], kept[k]) for k in base)


@pytest.mark.parametrize("args, message", [
    (["--concept", "hexagon"], "not a shapes-world concept"),
    (["--concept", "circle", "--suite", "cifar"], "invalid choice: 'cifar'"),
    (["--concept", "circle", "--images-per-prompt", "0"], "--images-per-prompt must be 1 or more"),
])
def test_evaluate_bad_input(capsys, tmp_path, args, message):
    from sd_erasure.erasure.cli import main

    argv = ["evaluate", "--suite", "shapes", "--model", "shapes", "--output", str(tmp_path / "r"), *args]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_demo_prints_the_table_and_the_self_checks_line(tmp_path, capsys):
    """The README's first command, with the fastest method (the default's numbers are in the README)."""
    from sd_erasure.evaluation.suite import demo

    metrics = demo(str(tmp_path / "demo"), "circle", show_progress=False, method="uce", images_per_prompt=2)
    printed = capsys.readouterr().out
    assert "with uce in" in printed and "UA 'circle'" in printed
    assert "self-check (no judge): erased:" in printed, printed
    assert metrics["erased"]["UA"] >= 0.9 and (tmp_path / "demo" / "report" / "report.html").is_file()
