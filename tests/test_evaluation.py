"""Evaluation of real-SD-style models: prompt sets, the generation harness, NudeNet, the report."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, torchrun
from sd_erasure.evaluation.generate import GenerationSettings, generate_images
from sd_erasure.evaluation.nudity import detect_nudity, summarize_nudity
from sd_erasure.evaluation.prompt_sets import BUILTIN, PROMPT_DIR, load_prompts

TINY = GenerationSettings(num_inference_steps=2, batch_size=3)


@pytest.mark.parametrize("name, count", [("i2p", 4703), ("nudity-142", 142), ("coco-10k", 9969), ("imagenette", 10),
                                         ("attack-vangogh", 50), ("attack-tench", 50)])
def test_shipped_prompt_sets_load_with_their_row_counts(name, count):
    rows = load_prompts(name)
    assert len(rows) == count
    assert all(r.seed is not None for r in rows) and len({r.id for r in rows}) == count
    assert sum(not r.prompt for r in rows) <= 1  # I2P itself holds one empty prompt (case 2260)


def test_prompt_sets_travel_with_their_attribution():
    sources = open(os.path.join(PROMPT_DIR, "SOURCES.md")).read()
    # attack_{church,garbage_truck,...}.csv is written as one pattern there
    assert all(f in sources or f.removeprefix("attack_").removesuffix(".csv") in sources for f in BUILTIN.values())
    assert "MIT" in sources


def test_i2p_fields_filters_and_multiline_prompts():
    first = load_prompts("i2p")[0]
    assert (first.id, first.seed, first.guidance, first.categories) == ("0", 4261553411, 13.0, ("violence", "self-harm"))
    assert len(load_prompts("i2p", categories=["sexual"])) == 931
    assert all(float(r.extra["nudity_percentage"]) >= 50 for r in load_prompts("i2p", min_nudity=50))
    assert len(load_prompts("i2p", categories=["sexual"], limit=5)) == 5
    assert sum("\n" in r.prompt for r in load_prompts("i2p")) == 4  # quoted prompts spanning lines stay one row


def test_user_csv_and_its_errors(tmp_path):
    from sd_erasure.erasure.errors import EraseError

    (tmp_path / "mine.csv").write_text('prompt,evaluation_seed\n"two\nlines",5\nplain,\n')
    rows = load_prompts(str(tmp_path / "mine.csv"))
    assert [(r.prompt, r.seed) for r in rows] == [("two\nlines", 5), ("plain", None)]
    (tmp_path / "bad.csv").write_text("text\nhello\n")
    with pytest.raises(EraseError, match="no 'prompt' column"):
        load_prompts(str(tmp_path / "bad.csv"))
    with pytest.raises(EraseError, match="neither a CSV file nor a shipped set"):
        load_prompts(str(tmp_path / "missing.csv"))


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_sd):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(tiny_sd))


def test_harness_writes_the_expected_files_and_resumes_without_regenerating(tiny_pipeline, tmp_path):
    rows = load_prompts("nudity-142", limit=4)
    settings = GenerationSettings(images_per_prompt=2, num_inference_steps=2, batch_size=3)
    manifest = generate_images(tiny_pipeline, rows, str(tmp_path), settings, {"model": "tiny"}, show_progress=False)
    expected = [f"{i:05d}-{k}.png" for i in range(4) for k in range(2)]
    assert sorted(m["file"] for m in manifest) == expected
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".png")) == expected
    lines = [json.loads(l) for l in open(tmp_path / "manifest.jsonl")]
    assert lines[1] == {"file": "00000-1.png", "prompt_id": rows[0].id, "prompt": rows[0].prompt,
                        "seed": rows[0].seed + 1, "guidance": 7.5}
    # an interruption: two images never got written
    before = {f: os.stat(tmp_path / f).st_mtime_ns for f in expected}
    for f in expected[3:5]:
        os.remove(tmp_path / f)
    generate_images(tiny_pipeline, rows, str(tmp_path), settings, {"model": "tiny"}, show_progress=False)
    after = {f: os.stat(tmp_path / f).st_mtime_ns for f in expected}
    assert [f for f in expected if after[f] != before[f]] == expected[3:5]


def test_harness_refuses_a_folder_of_another_run(tiny_pipeline, tmp_path):
    from sd_erasure.erasure.errors import EraseError

    rows = load_prompts("nudity-142", limit=2)
    generate_images(tiny_pipeline, rows, str(tmp_path), TINY, {"model": "a"}, show_progress=False)
    files = sorted(os.listdir(tmp_path))
    with pytest.raises(EraseError, match="different run"):
        generate_images(tiny_pipeline, rows, str(tmp_path), TINY, {"model": "b"}, show_progress=False)
    assert sorted(os.listdir(tmp_path)) == files


def test_per_prompt_guidance_comes_from_the_csv():
    from sd_erasure.evaluation.generate import image_jobs

    rows = load_prompts("i2p", limit=3)
    jobs = image_jobs(rows, GenerationSettings(guidance_scale=None))
    assert [j.guidance for j in jobs] == [r.guidance for r in rows]


def test_two_processes_write_exactly_the_files_of_one(tiny_sd, tmp_path):
    script = (
        "import sys\n"
        "from diffusers import StableDiffusionPipeline\n"
        "from sd_erasure.evaluation.generate import GenerationSettings, generate_images\n"
        "from sd_erasure.evaluation.prompt_sets import load_prompts\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({str(tiny_sd)!r})\n"
        "generate_images(pipe, load_prompts('nudity-142', limit=5), sys.argv[1],\n"
        "                GenerationSettings(images_per_prompt=2, num_inference_steps=2, batch_size=2), {}, False)\n"
        "from sd_erasure.evaluation.generate import process_state\n"
        # one write per process: two processes' print() calls can interleave on the shared pipe
        "sys.stdout.write(f'processes {process_state().num_processes}\\n'); sys.stdout.flush()\n"
    )
    (tmp_path / "gen.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": REPO, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(tmp_path / "gen.py"), str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*torchrun(),
                          str(tmp_path / "gen.py"), str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert one.stdout.count("processes 1") == 1 and two.stdout.count("processes 2") == 2  # really sharded
    names = sorted(f for f in os.listdir(tmp_path / "one") if f.endswith(".png"))
    assert len(names) == 10 and names == sorted(f for f in os.listdir(tmp_path / "two") if f.endswith(".png"))
    for name in names + ["manifest.jsonl"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_nudenet_runs_for_real_and_finds_nothing_in_benign_images(tmp_path):
    from sd_erasure.evaluation.shapes import dataset

    paths = []
    for i, sample in enumerate(dataset(6, seed=1)):
        paths.append(str(tmp_path / f"{i}.png"))
        sample.image.resize((256, 256)).save(paths[-1])
    detections = detect_nudity(paths, show_progress=False)
    summary = summarize_nudity(detections)
    assert summary["images"] == 6 and summary["total_detections"] == 0 and summary["nudity_rate"] == 0.0


def test_counting_and_thresholds_on_recorded_detector_outputs():
    # Detector outputs as NudeNet returns them (recorded shape), standing in for images we cannot ship.
    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.81, "box": [1, 2, 3, 4]},
         {"class": "FACE_FEMALE", "score": 0.95, "box": [0, 0, 9, 9]}],
        [{"class": "BELLY_EXPOSED", "score": 0.5, "box": [1, 1, 2, 2]}],
        [{"class": "FEET_COVERED", "score": 0.9, "box": [1, 1, 2, 2]}],
        [],
    ]
    at_06 = summarize_nudity(detections)
    assert at_06["per_class"]["FEMALE_BREAST_EXPOSED"] == 1 and at_06["per_class"]["BELLY_EXPOSED"] == 0
    assert (at_06["total_detections"], at_06["images_with_nudity"], at_06["nudity_rate"]) == (1, 1, 0.25)
    at_045 = summarize_nudity(detections, threshold=0.45)
    assert (at_045["total_detections"], at_045["images_with_nudity"], at_045["nudity_rate"]) == (2, 2, 0.5)
    assert "FACE_FEMALE" not in at_045["per_class"] and "FEET_COVERED" not in at_045["per_class"]


def test_evaluate_cli_compares_base_and_erased_and_writes_the_report(erased, tmp_path, capsys):
    from sd_erasure.erasure.cli import main

    out = tmp_path / "eval"
    args = ["evaluate", "--suite", "nudity", "--model", str(erased), "--output", str(out), "--limit", "4",
            "--num-inference-steps", "2", "--batch-size", "4"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base_model"] == json.loads((erased / "erasure.json").read_text())["base_model"]["id"]
    assert metrics["base"]["images"] == metrics["erased"]["images"] == 4
    assert metrics["protocol"]["guidance"] == "fixed 7.5" and metrics["protocol"]["prompts"] == "nudity-142"
    assert metrics["versions"]["diffusers"] and set(metrics["seconds"]) >= {"generate_base", "generate_erased", "total"}
    page = (out / "report.html").read_text()
    assert page.count('<img src="thumbs/') == 8 and "pixelated" in page
    assert all((out / "thumbs" / f"{n}-0000{i}-0.png").is_file() for n in ("base", "erased") for i in range(4))
    # a rerun resumes: nothing regenerated
    stamps = {f: os.stat(out / "base" / f).st_mtime_ns for f in os.listdir(out / "base") if f.endswith(".png")}
    assert main(args) == 0
    assert stamps == {f: os.stat(out / "base" / f).st_mtime_ns for f in stamps}


@pytest.mark.parametrize("extra, message", [
    (["--prompts", "/nowhere/prompts.csv"], "neither a CSV file nor a shipped set"),
    (["--category", "no-such-category"], "no prompts left"),
    (["--suite", "cifar"], "invalid choice: 'cifar'"),
    (["--suite", "coco"], "needs --real-images"),
    (["--suite", "imagenette"], "needs --classifier"),
])
def test_evaluate_bad_input(erased, tmp_path, capsys, extra, message):
    from sd_erasure.erasure.cli import main

    capsys.readouterr()
    try:
        code = main(["evaluate", "--suite", "nudity", "--model", str(erased), "--output", str(tmp_path / "e"), *extra])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e").exists()


def test_coco_suite_checks_what_it_needs_before_generating(erased, tmp_path, capsys):
    from sd_erasure.erasure.cli import main
    from sd_erasure.evaluation.shapes import dataset

    real = tmp_path / "real"
    real.mkdir()
    for i, sample in enumerate(dataset(10, seed=2)):
        sample.image.save(real / f"{i}.png")
    capsys.readouterr()
    code = main(["evaluate", "--suite", "coco", "--model", str(erased), "--output", str(tmp_path / "e"),
                 "--real-images", str(real), "--limit", "2"])
    err = capsys.readouterr().err
    # torch-fidelity's Inception cannot be installed on this CPU machine (it pulls CUDA torch + torchvision)
    assert code == 2 and ("torch-fidelity" in err or "weights-inception" in err), err
    assert not (tmp_path / "e").exists()


def test_imagenette_suite_reports_class_wise_ua(erased, tmp_path):
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    from sd_erasure.erasure.cli import main

    classifier = tmp_path / "classifier"  # a small random ResNet standing in for microsoft/resnet-50
    torch.manual_seed(0)
    ResNetForImageClassification(ResNetConfig(num_labels=10, hidden_sizes=[8, 16], depths=[1, 1],
                                              embedding_size=8)).save_pretrained(classifier)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(classifier)
    out = tmp_path / "eval"
    assert main(["evaluate", "--suite", "imagenette", "--model", str(erased), "--output", str(out), "--concept", "tench",
                 "--classifier", str(classifier), "--images-per-prompt", "2", "--num-inference-steps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("base", "erased"):
        accuracy = metrics[name]["per_class_accuracy"]
        assert len(accuracy) == 10 and metrics[name]["UA"] == 1 - accuracy["tench"]
    assert "UA (1 - accuracy on the erased class)" in (out / "report.html").read_text()
    assert "pixelated" not in (out / "report.html").read_text()
