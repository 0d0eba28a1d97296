"""SLUG: one layer group of the text encoder changes by one gradient step, the rest stays bit-identical,
the output is a stock pipeline, it erases circle on the shapes world, and its bad inputs get one line."""

import dataclasses
import json
import os

import pytest

from conftest import erase_cli
from test_methods import assert_stock_output, changed_tensors


@pytest.fixture(scope="module")
def slug_circle(tmp_path_factory):
    out = tmp_path_factory.mktemp("slug") / "out"
    code = erase_cli("--model", "shapes", "--concept", "circle", "--output", out, "--method", "slug")
    return out, code


def test_slug_changes_one_text_encoder_group_and_stores_under_one_percent(slug_circle):
    from sd_erasure import BUNDLED_MODELS

    out, _ = slug_circle
    record = assert_stock_output(out)
    base = BUNDLED_MODELS["shapes"]
    assert not changed_tensors(base, out) and not changed_tensors(base, out, "vae")
    changed = changed_tensors(base, out, "text_encoder", "model.safetensors")
    slug = record["slug"]
    assert list(slug["encoders"]) == ["text_encoder"]
    chosen = slug["encoders"]["text_encoder"]
    assert changed == set(chosen["updated"]) and 1 <= len(changed) <= 3, (changed, chosen["updated"])
    assert chosen["chosen"] in chosen["pareto_front"] and chosen["chosen"] in chosen["updated"]
    model_bytes = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(base)
                      for f in files if f.endswith(".safetensors"))
    assert 0 < slug["stored_bytes"] <= 0.01 * model_bytes
    # the step is an ascent on the forget loss: the forget images match their concept less in CLIP space
    assert slug["forget_accuracy"]["erased"] < slug["forget_accuracy"]["base"]
    # the retain guard: every try within 10% of the base's retain alignment is kept, the others were
    # refused (on circle the search tries steps beyond it), and the step taken is one it kept
    base_alignment = slug["retain_alignment"]["base"][0]
    assert all(t["kept"] == (t["generated_retain_alignment"][0] >= 0.9 * base_alignment - 1e-9)
               for t in slug["search"])
    assert not all(t["kept"] for t in slug["search"])
    taken = next(t for t in slug["search"] if t["scale"] == slug["scale"])
    assert taken["kept"] and taken["step"]["text_encoder"] > 0
    assert slug["reached"] == any(t["erased"] and t["kept"] for t in slug["search"])
    # drawing starts where the free text-only reading last left the concept, and stops once the step
    # is bracketed within 10%: fewer than the official 10 tries
    bracket, tries = slug["text_bracket"], slug["search"]
    assert tries[0]["scale"] == bracket[-1]["scale"] > bracket[0]["scale"]
    assert all(r["forget_accuracy"] > record["hyperparameters"]["forget_accuracy"] for r in bracket)
    high = min(t["scale"] for t in tries if t["erased"] or not t["kept"])
    low = max(t["scale"] for t in tries if t["kept"] and not t["erased"])
    assert len(tries) < 10 and 0 < high - low <= 0.1 * high
    # the self-check's empty prompt is the base's encoding: through the unchanged UNet its error is the base's
    errors = record["self_check"]["errors"]
    assert errors["erased"]["empty_prompt"] == errors["base"]["empty_prompt"]
    assert errors["erased"]["concept_prompt"] != errors["base"]["concept_prompt"]


def test_slug_erases_circle_on_the_shapes_world(slug_circle, tmp_path):
    from sd_erasure.evaluation.metrics import Protocol
    from sd_erasure.evaluation.suite import evaluate_shapes

    out, _ = slug_circle
    metrics = evaluate_shapes(str(out), "circle", str(tmp_path / "report"), protocol=Protocol(images_per_prompt=2),
                              show_progress=False)
    assert metrics["erased"]["UA"] >= metrics["base"]["UA"] + 0.5, metrics


@pytest.mark.parametrize("args, message", [
    ([], "SLUG needs --clip-model"),
    (["--clip-model", "shapes-clip"], "is not this pipeline's text encoder"),
    (["--search-tolerance", "1"], "--search-tolerance 1.0 is outside [0, 1): use 0"),
])
def test_slug_bad_input_gets_one_line_and_no_output(tiny_sd, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "slug", *args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp_path / "out.incomplete").exists()


def test_slug_clip_folder_without_config_is_refused_before_loading(tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    out = tmp_path / "out"
    assert erase_cli("--model", "shapes", "--concept", "circle", "--output", out, "--method", "slug",
                     "--clip-model", tmp_path / "clip") == 2
    assert "has no config.json" in capsys.readouterr().err
    assert not out.exists()


def test_bundled_image_tower_reads_the_bundled_text_encoder():
    """The shipped shapes-clip's text tower is the bundled model's text encoder, and it names fresh renders zero-shot."""
    import torch
    from transformers import CLIPTokenizer, CLIPTextModel

    from sd_erasure import BUNDLED_MODELS
    from sd_erasure.erasure.slug import image_embeddings, load_clip, text_embeddings
    from sd_erasure.evaluation.shapes import OBJECTS, STYLES, TEMPLATES, dataset

    folder = BUNDLED_MODELS["shapes"]
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    clip, processor = load_clip("shapes-clip", text_encoder, "cpu")  # refuses a tower that is not this encoder
    assert all(torch.equal(a, b) for a, b in zip(clip.text_model.state_dict().values(),
                                                 text_encoder.state_dict().values()))
    classes = [TEMPLATES[0].format(style=s, object=o) for s in STYLES for o in OBJECTS]
    samples = dataset(100, seed=12345, template_ids=(0,))
    with torch.no_grad():
        scores = image_embeddings(clip, processor, [s.image for s in samples], "cpu") @ \
            text_embeddings(clip, tokenizer, classes, "cpu").T
    named = [classes[i] for i in scores.argmax(1).tolist()]
    truth = [TEMPLATES[0].format(style=s.style, object=s.object) for s in samples]
    assert sum(a == b for a, b in zip(named, truth)) >= 90


def test_the_search_draws_the_same_images_in_calls_of_any_size(tiny_sd):
    """search_batch_size is a speed knob: each image keeps its own seed (the shapes profile sets 20)."""
    import numpy as np
    from diffusers import StableDiffusionPipeline

    from sd_erasure.erasure.slug import SlugConfig, generate

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd)
    prompts = ["a cat", "a dog", "a red car", "a tree", "a house"]
    config = SlugConfig(model=str(tiny_sd), concept="a cat", synthesis_steps=2, synthesis_batch_size=2)
    drawn = [generate(pipeline, settings, prompts, "cpu") for settings in
             (config, dataclasses.replace(config, search_batch_size=5), dataclasses.replace(config, search_batch_size=3))]
    assert all(len(images) == len(prompts) for images in drawn)
    for images in drawn[1:]:
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(drawn[0], images))
