"""SD 2.x: every registered method on a tiny SD-2-shaped pipeline (v-prediction, a 48-wide GELU text
encoder against SD 1.x-tiny's 32, linear projections, `!` padding). The output loads with plain
diffusers as a StableDiffusionPipeline that keeps the base's prediction type and tokenizer, what
the method does not train is bit-identical, and an interrupted run resumes to the uninterrupted
run's weights (on the epsilon variant, SD 2.x-base's)."""

import pytest
import torch

from conftest import SMOKE_RUNS, assert_resume_reproduces, changed_components, erase_cli, random_clip
from sd_erasure import methods

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
    from diffusers import StableDiffusionPipeline

    encoder = StableDiffusionPipeline.from_pretrained(sd2_v).text_encoder
    return random_clip(encoder, tmp_path_factory.mktemp("sd2-clip") / "clip")


def test_every_registered_method_is_run_on_sd2():
    assert set(SMOKE_RUNS) == set(methods())


@pytest.mark.parametrize("method", SMOKE_RUNS)
def test_method_on_sd2_v_prediction_writes_a_stock_sd2_pipeline_changing_only_its_component(
        method, sd2_v, sd2_clip, tmp_path):
    from diffusers import DiffusionPipeline

    args, component = SMOKE_RUNS[method]
    out = tmp_path / "out"
    assert erase_cli("--model", sd2_v, "--concept", "a cat", "--output", out, "--method", method,
                     *(a.format(clip=sd2_clip) for a in args)) == 0
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert pipeline.tokenizer.pad_token == "!" and pipeline.unet.config.use_linear_projection
    assert changed_components(sd2_v, out, WEIGHTS) == ({component} if component else set())


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
    assert_resume_reproduces(base, tmp_path)
