"""The erasure-capable pipeline class, image-folder forget sets, precision and accumulation settings."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, erase_cli, unet_weights
from sd_erasure.erasure.diffusion import epoch_indices
from sd_erasure.erasure.saliency import load_mask


def test_pipeline_erase_in_memory_then_save_as_stock(tiny_sd, tmp_path):
    from diffusers import DiffusionPipeline
    from sd_erasure.pipelines import StableDiffusionErasurePipeline

    pipe = StableDiffusionErasurePipeline.from_pretrained(str(tiny_sd))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    mask = pipe.erase("nudity", num_images=8, synthesis_steps=2, steps=3, batch_size=4).artifacts["saliency_mask"]
    after = pipe.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(before[k][~mask[k]], after[k][~mask[k]]) for k in before)
    assert pipe.erasure_record["steps"] == 3
    assert {m.device for m in (pipe.unet, pipe.text_encoder, pipe.vae)} == {pipe.device}
    # inference is StableDiffusionPipeline's, and runs in fp32 as before (no leftover autocast)
    image = pipe("a photo", num_inference_steps=2, output_type="latent").images
    assert image.dtype == torch.float32 and image.shape == (1, 4, 8, 8)
    pipe.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    reloaded = DiffusionPipeline.from_pretrained(str(tmp_path / "saved"))
    assert all(torch.equal(after[k], v) for k, v in reloaded.unet.state_dict().items())


def test_forget_set_from_an_image_folder_with_captions(tiny_sd, tmp_path):
    images = tmp_path / "cats"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"a cat number {i}"}) + "\n"
                                                   for i in range(3)))
    (images / "3.txt").write_text("a cat from a text file")
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--forget-images", images,
                     "--misaligned-prompt", "a photo of a dog", *FAST) == 0
    record = json.loads((out / "erasure.json").read_text())
    assert record["data"]["forget_size"] == 5
    assert record["prompts"]["misaligned"] == ["a photo of a dog"]
    assert record["hyperparameters"]["retain_loss_weight"] == 0.5  # the class-wise default


@pytest.mark.parametrize("extra", [["--mixed-precision", "bf16"], ["--gradient-accumulation-steps", "2", "--gradient-checkpointing"],
                                   ["--misaligned-target", "base", "--scope", "xattn"]])
def test_training_options_keep_non_salient_weights_bit_identical(tiny_sd, tmp_path, extra):
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, *FAST, *extra) == 0
    base, new, mask = unet_weights(tiny_sd), unet_weights(out), load_mask(out / "saliency_mask.safetensors")
    assert all(torch.equal(base[k][~mask[k]], new[k][~mask[k]]) for k in base)
    assert any(not torch.equal(base[k], new[k]) for k in base)
    assert new["conv_in.weight"].dtype == torch.float32


def test_epoch_indices_visit_every_sample_once_per_epoch():
    first_two_epochs = epoch_indices(10, 20, 0, seed=3, name="forget")
    assert sorted(first_two_epochs[:10].tolist()) == list(range(10)) == sorted(first_two_epochs[10:].tolist())
    # any window of the sequence is the same whoever draws it
    assert torch.equal(epoch_indices(10, 7, 6, seed=3, name="forget"), first_two_epochs[6:13])


def test_random_pipeline_tokenizer_keeps_words_whole(tiny_sd):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(tiny_sd, "tokenizer"))
    assert tokenizer.tokenize("a nude person") == ["a</w>", "nude</w>", "person</w>"]
    assert len(tokenizer("unseen words still tokenize").input_ids) > 5


def test_misaligned_target_base_differs_from_current_and_is_recorded(tiny_sd, tmp_path):
    outputs = {}
    for target in ("current", "base"):
        outputs[target] = tmp_path / target
        assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", outputs[target], *FAST,
                         "--learning-rate", "1e-3", "--misaligned-target", target) == 0
        record = json.loads((outputs[target] / "erasure.json").read_text())
        assert record["hyperparameters"]["misaligned_target"] == target
    current, frozen = unet_weights(outputs["current"]), unet_weights(outputs["base"])
    assert any(not torch.equal(current[k], frozen[k]) for k in current)


def test_unset_settings_take_the_official_defaults_or_the_models_profile(tiny_sd, erased):
    from sd_erasure import BUNDLED_MODELS, SalUnConfig
    from sd_erasure.erasure.folders import BaseModel

    record = json.loads((erased / "erasure.json").read_text())
    hp, source = record["hyperparameters"], record["settings_source"]
    assert (hp["scope"], hp["learning_rate"], hp["misaligned_target"], hp["synthesis_steps"]) == ("full", 1e-5, "current", 4)
    assert (source["scope"], source["learning_rate"], source["synthesis_steps"]) == ("official default",) * 2 + ("user",)
    assert hp["forget_prompts"] == ["a photo of a nude person"] and hp["retain_loss_weight"] == 0.1
    assert BaseModel(str(tiny_sd), str(tiny_sd)).profile is None
    shapes = BaseModel("shapes", BUNDLED_MODELS["shapes"]).profile.settings(SalUnConfig, "salun", "circle")
    assert (shapes["scope"], shapes["learning_rate"], shapes["misaligned_target"]) == ("xattn", 7e-4, "base")
    assert "a red circle" in shapes["forget_prompts"] and "a red square" in shapes["misaligned_prompts"]


def test_synthesis_with_another_sampler_is_cached_apart_and_leaves_the_pipelines_own(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    from sd_erasure.erasure.data import synthesize_latents

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd)
    own = pipeline.scheduler
    settings = dict(num_images=4, seed=0, num_inference_steps=3, guidance_scale=7.5, resolution=32, batch_size=4,
                    model_key="k", cache_dir=str(tmp_path), show_progress=False)
    ddim = synthesize_latents(pipeline, ["a photo"], **settings)
    dpm = synthesize_latents(pipeline, ["a photo"], scheduler="dpm", **settings)
    assert pipeline.scheduler is own
    assert dpm.latents.shape == ddim.latents.shape and not torch.allclose(dpm.latents, ddim.latents)
    keys = [json.loads((folder / "key.json").read_text()) for folder in (tmp_path / "synthesized").iterdir()]
    assert sorted(k["scheduler"] for k in keys) == ["DDIMScheduler", "DPMSolverMultistepScheduler"]
