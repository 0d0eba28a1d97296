"""SD 2.x: every registered method on a tiny SD-2-shaped pipeline (v-prediction, a 48-wide GELU text
encoder against SD 1.x-tiny's 32, linear projections, `!` padding). The output loads with plain
diffusers as a StableDiffusionPipeline that keeps the base's prediction type and tokenizer, what
the method does not train is bit-identical, and an interrupted run resumes to the uninterrupted
run's weights (on the epsilon variant, SD 2.x-base's)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import erase_cli
from sd_erasure import SalUnConfig, erase, methods

TRAINING = ["--num-images", "8", "--synthesis-steps", "2", "--steps", "3", "--batch-size", "2"]
# each method's cheapest settings, and the one component it changes (None: no weights, SEOT)
RUNS = {
    "salun": (TRAINING, "unet"), "salun-soft": (TRAINING, "unet"), "esd": (TRAINING, "unet"),
    "ca": (TRAINING, "unet"), "fmn": (TRAINING, "unet"), "scissorhands": (TRAINING, "unet"),
    "erasediff": (TRAINING, "unet"), "advunlearn": (TRAINING, "text_encoder"), "uce": ([], "unet"),
    "slug": (["--num-images", "8", "--synthesis-steps", "2", "--clip-model", "{clip}"], "text_encoder"),
    "seot": ([], None),
}
WEIGHTS = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
           "vae": "vae/diffusion_pytorch_model.safetensors"}


def random_pipeline(folder, *args):
    from sd_erasure.erasure.cli import main

    assert main(["random-pipeline", str(folder), "--size", "tiny-sd2", *args]) == 0
    return folder


@pytest.fixture(scope="module")
def sd2_v(tmp_path_factory):
    return random_pipeline(tmp_path_factory.mktemp("sd2") / "tiny-sd2-v")


@pytest.fixture(scope="module")
def sd2_clip(sd2_v, tmp_path_factory):
    """A CLIP model whose text tower is the pipeline's text encoder, with a small random image tower
    (mocked: no SD 2.x-sized CLIP can be downloaded here; SLUG only needs the towers to agree)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(sd2_v / "text_encoder")
    clip = CLIPModel(CLIPConfig(text_config=encoder.config.to_dict(), projection_dim=16, vision_config=dict(
        image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)))
    clip.text_model.load_state_dict(encoder.state_dict())
    folder = tmp_path_factory.mktemp("sd2-clip") / "clip"
    clip.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def test_every_registered_method_is_run_on_sd2():
    assert set(RUNS) == set(methods())


@pytest.mark.parametrize("method", RUNS)
def test_method_on_sd2_v_prediction_writes_a_stock_sd2_pipeline_changing_only_its_component(
        method, sd2_v, sd2_clip, tmp_path):
    from diffusers import DiffusionPipeline

    args, component = RUNS[method]
    out = tmp_path / "out"
    assert erase_cli("--model", sd2_v, "--concept", "a cat", "--output", out, "--method", method,
                     *(a.format(clip=sd2_clip) for a in args)) == 0
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert pipeline.tokenizer.pad_token == "!" and pipeline.unet.config.use_linear_projection
    changed = {}
    for name, file in WEIGHTS.items():
        base, new = load_file(sd2_v / file), load_file(out / file)
        changed[name] = sorted(k for k in base if not torch.equal(base[k].view(torch.uint8), new[k].view(torch.uint8)))
    assert {n for n, keys in changed.items() if keys} == ({component} if component else set())
    record = json.loads((out / "erasure.json").read_text())
    assert {n: record["changed"][n]["tensors"] for n in WEIGHTS} == {n: len(k) for n, k in changed.items()}


def test_prediction_target_follows_the_scheduler():
    from diffusers import DDPMScheduler

    from sd_erasure.erasure.diffusion import prediction_target

    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    targets = {kind: prediction_target(DDPMScheduler(prediction_type=kind), latents, noise, t)
               for kind in ("epsilon", "v_prediction", "sample")}
    alpha_bar = DDPMScheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.equal(targets["epsilon"], noise) and torch.equal(targets["sample"], latents)
    assert torch.allclose(targets["v_prediction"], alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents, atol=1e-6)


def test_resumed_sd2_run_gives_the_uninterrupted_weights(tmp_path_factory, tmp_path):
    base = random_pipeline(tmp_path_factory.mktemp("sd2") / "tiny-sd2-eps", "--prediction-type", "epsilon")
    settings = dict(model=str(base), concept="a cat", num_images=8, synthesis_steps=2, steps=4, batch_size=2,
                    checkpointing_steps=2)
    erase(SalUnConfig(output_dir=str(tmp_path / "whole"), **settings), show_progress=False)

    def stop_at_step_3(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        erase(SalUnConfig(output_dir=str(tmp_path / "resumed"), **settings), step_callback=stop_at_step_3,
              show_progress=False)
    erase(SalUnConfig(output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest", **settings),
          show_progress=False)
    whole, resumed = (load_file(tmp_path / run / WEIGHTS["unet"]) for run in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not all(torch.equal(whole[k], v) for k, v in load_file(base / WEIGHTS["unet"]).items())
