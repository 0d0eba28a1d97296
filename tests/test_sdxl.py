"""SDXL on a tiny random StableDiffusionXLPipeline (two text encoders of different widths, pooled
embeddings and size ids as added conditions): the conditioning every method passes is the one the
pipeline itself builds, each method that supports SDXL writes a stock StableDiffusionXLPipeline in
which only its component changed (the second text encoder only for AdvUnlearn, which trains both),
SEOT's folder loads with `custom_pipeline` as an SDXL pipeline that suppresses what the self-check
scores, SLUG steps each text encoder in a layer the UNet reads (and without the second encoder's CLIP
model is refused in one line before the model loads), the LoRA export loads with the SDXL
pipeline's `load_lora_weights` (AdvUnlearn's LoRA on both text encoders too), resume reproduces the
weights, SalUn on 2 processes gives the 1-process weights, SPM's membrane is weighed per prompt, the
model card names the SDXL pipeline, and the attack's prefix enters both text encoders as its typed
text would. On the bundled SDXL-architecture shapes model, UCE erases circle for the judge and
`sd-erase attack` runs on the result."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import (REPO, SMOKE_CHECK, SMOKE_RUNS, assert_resume_reproduces, assert_sharded_salun_matches_one_process,
                      changed_components, erase_cli, random_clip, torchrun)
from sd_erasure import methods

WEIGHTS = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
           "text_encoder_2": "text_encoder_2/model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors"}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from sd_erasure.erasure.cli import main

    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    assert main(["random-pipeline", str(folder), "--size", "tiny-sdxl"]) == 0
    return folder


def test_packed_conditioning_gives_the_pipelines_own_prediction(sdxl):
    from diffusers import StableDiffusionXLPipeline

    from sd_erasure.erasure.diffusion import encode_prompts, sdxl_conditions

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a red circle", device="cpu")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    time_ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), embeds.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    latents, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    with torch.no_grad():
        expected = pipe.unet(latents, t, torch.cat([embeds, negative]), added_cond_kwargs={
            "text_embeds": torch.cat([pooled, negative_pooled]), "time_ids": time_ids.repeat(2, 1)}).sample
        packed = encode_prompts(pipe, ["a red circle", ""], "cpu")
        with sdxl_conditions(pipe):
            ours = pipe.unet(latents, t, torch.stack([packed["a red circle"], packed[""]])).sample
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the prompt matters, so the check can fail


def test_the_attack_prefix_enters_both_text_encoders_as_the_typed_text(sdxl):
    from contextlib import ExitStack

    from diffusers import StableDiffusionXLPipeline

    from sd_erasure.erasure.diffusion import (PrefixEmbeddings, encode_prompts, prefixed_token_ids, text_encoders,
                                              unet_conditioning)
    from sd_erasure.evaluation.attack import attacked_text, candidate_tokens

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    encoders = text_encoders(pipe)
    candidates = candidate_tokens([tokenizer for tokenizer, _ in encoders], ["cat"])
    chosen = [candidates[3], candidates[-1], candidates[len(candidates) // 2]]
    text = attacked_text(pipe.tokenizer, chosen, "a cat")
    with torch.no_grad(), ExitStack() as active:
        typed = encode_prompts(pipe, [text], "cpu")[text]
        for _, encoder in encoders:
            active.enter_context(PrefixEmbeddings(encoder)).vectors = encoder.get_input_embeddings().weight[chosen]
        hooked = unet_conditioning(pipe, [prefixed_token_ids(tokenizer, ["a cat"], 3, candidates[0])
                                          for tokenizer, _ in encoders])[0]
    torch.testing.assert_close(hooked, typed)  # token states of both encoders, pooled embedding, size ids
    assert not torch.allclose(typed, encode_prompts(pipe, ["a cat"], "cpu")["a cat"])  # the prefix matters


@pytest.fixture(scope="module")
def sdxl_clips(sdxl, tmp_path_factory):
    """A CLIP model for each of the tiny SDXL's text encoders (SLUG's image towers)."""
    from diffusers import StableDiffusionXLPipeline

    pipe, folder = StableDiffusionXLPipeline.from_pretrained(sdxl), tmp_path_factory.mktemp("sdxl-clips")
    return [random_clip(getattr(pipe, encoder), folder / encoder) for encoder in ("text_encoder", "text_encoder_2")]


def test_every_registered_method_is_run_on_sdxl():
    assert set(SMOKE_RUNS) == set(methods())


@pytest.mark.parametrize("method", sorted(set(SMOKE_RUNS) - {"advunlearn", "slug"}))  # those two: below
def test_method_on_sdxl_writes_a_stock_sdxl_pipeline_changing_only_its_component(method, sdxl, tmp_path):
    from diffusers import DiffusionPipeline

    args, component = SMOKE_RUNS[method]
    out = tmp_path / "out"
    assert erase_cli("--model", sdxl, "--concept", "a cat", "--output", out, "--method", method, *args) == 0
    assert type(DiffusionPipeline.from_pretrained(str(out))).__name__ == "StableDiffusionXLPipeline"
    assert changed_components(sdxl, out, WEIGHTS) == ({component} if component else set())
    assert json.loads((out / "erasure.json").read_text())["base_model"]["family"] == "sdxl"


def test_slug_on_sdxl_steps_each_text_encoder_in_a_layer_its_unet_reads(sdxl, sdxl_clips, tmp_path):
    """SLUG on SDXL, with a CLIP model per text encoder: one group of each encoder changes (what
    erasure.json names), in a layer below the last (SDXL's UNet reads each encoder's penultimate
    states), the UNet and VAE do not, and the output is a stock SDXL pipeline."""
    from diffusers import DiffusionPipeline

    args, _ = SMOKE_RUNS["slug"]
    out = tmp_path / "out"
    assert erase_cli("--model", sdxl, "--concept", "a cat", "--output", out, "--method", "slug",
                     *(a.format(clip=sdxl_clips[0]) for a in args), "--clip-model-2", sdxl_clips[1]) == 0
    assert type(DiffusionPipeline.from_pretrained(str(out))).__name__ == "StableDiffusionXLPipeline"
    assert changed_components(sdxl, out, WEIGHTS) == {"text_encoder", "text_encoder_2"}
    encoders = json.loads((out / "erasure.json").read_text())["slug"]["encoders"]
    for name in ("text_encoder", "text_encoder_2"):
        layers = json.loads((sdxl / name / "config.json").read_text())["num_hidden_layers"]
        updated = encoders[name]["updated"]
        assert updated and all(int(n.split(".layers.")[1].split(".")[0]) < layers - 1 for n in updated), updated
        assert encoders[name]["step"] > 0


@pytest.mark.parametrize("model, args, message", [
    ("sdxl", [], "SLUG on SDXL needs --clip-model-2 too"),
    ("tiny_sd", ["--clip-model-2", "shapes-xl-clip-2"], "--clip-model-2 is for SDXL's second text encoder"),
])
def test_slug_clip_models_that_do_not_fit_the_family_are_refused_before_loading(model, args, message, sdxl, tiny_sd,
                                                                                tmp_path, capsys):
    out = tmp_path / "out"
    base = {"sdxl": sdxl, "tiny_sd": tiny_sd}[model]
    assert erase_cli("--model", base, "--concept", "a cat", "--output", out, "--method", "slug",
                     "--clip-model", "shapes-clip", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and not (tmp_path / "out.incomplete").exists()


def test_seot_on_sdxl_suppresses_through_both_encoders_and_its_self_check_scores_what_it_samples_with(sdxl, tmp_path):
    """SEOT on SDXL: plain diffusers loads the stock pipeline; with `custom_pipeline` the folder's
    pipeline.py (beside suppress_eot.py) is an SDXL pipeline that leaves a prompt without the concept
    bit-identical and changes one naming it; and the conditioning the self-check scores
    (`encode_prompts`: both encoders' states suppressed, the pooled embedding kept) is what that
    pipeline hands its UNet once it suppresses."""
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    from sd_erasure.erasure.diffusion import encode_prompts

    out = tmp_path / "out"
    assert erase_cli("--model", sdxl, "--concept", "a cat", "--output", out, "--method", "seot", *SMOKE_CHECK) == 0
    plain = DiffusionPipeline.from_pretrained(str(out))
    custom = DiffusionPipeline.from_pretrained(str(out), custom_pipeline=str(out), trust_remote_code=True)
    assert type(plain) is StableDiffusionXLPipeline and isinstance(custom, StableDiffusionXLPipeline)
    assert custom.suppression["suppressed_words"] == ["a cat"]

    def draw(pipeline, prompt):
        return pipeline(prompt, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)).images

    assert (draw(custom, "a dog") == draw(plain, "a dog")).all()
    assert abs(draw(custom, "a cat on a mat") - draw(plain, "a cat on a mat")).max() > 0.01

    custom.register_to_config(suppression_start=0.0, optimization_iterations=0)  # SWR from the first step
    seen = []
    hook = custom.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (kwargs["encoder_hidden_states"][-1], kwargs["added_cond_kwargs"]["text_embeds"][-1])), with_kwargs=True)
    custom("a cat on a mat", num_inference_steps=1, output_type="latent")
    hook.remove()
    width = custom.text_encoder_2.config.projection_dim
    for suppressed in (True, False):
        packed = encode_prompts(custom, ["a cat on a mat"], "cpu", suppressed=suppressed)["a cat on a mat"]
        same = torch.allclose(packed[:-1], seen[0][0], atol=1e-5), torch.allclose(packed[-1, :width], seen[0][1], atol=1e-5)
        assert same == (suppressed, True)


@pytest.fixture(scope="module")
def sdxl_uce(sdxl, tmp_path_factory):
    """A UCE erase of the tiny SDXL written as a pipeline and as a LoRA (`--output-format both`)."""
    out = tmp_path_factory.mktemp("sdxl-uce") / "out"
    assert erase_cli("--model", sdxl, "--concept", "a cat", "--output", out, "--method", "uce",
                     "--output-format", "both", *SMOKE_CHECK) == 0
    return out


def test_uce_lora_export_loads_onto_the_sdxl_base_as_the_erased_weights(sdxl, sdxl_uce):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    out = sdxl_uce
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    fused, erased = pipe.unet.state_dict(), load_file(out / WEIGHTS["unet"])
    assert max(float((fused[k] - erased[k]).abs().max()) for k in erased) < 1e-6


def test_advunlearn_trains_both_text_encoders_as_a_lora_on_two_processes_that_plain_sdxl_loads(sdxl, tmp_path):
    """AdvUnlearn on SDXL with a LoRA (`--adapter lora --output-format both`), on 2 CPU processes
    (torchrun, gloo: DDP needs a gradient for every trained tensor, so only what reaches the UNet
    trains): both text encoders change, the UNet does not, and the adapter file, loaded onto the base
    with plain `load_lora_weights` and fused, gives the written pipeline's weights of both encoders."""
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    args, _ = SMOKE_RUNS["advunlearn"]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*torchrun(), "-m",
                          "sd_erasure.erasure.cli", "erase", "--model", str(sdxl), "--concept", "a cat", "--output",
                          str(out), "--method", "advunlearn", *args, "--warmup-steps", "1",
                          "--attack-steps", "2", "--adapter", "lora", "--output-format", "both"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-8000:]
    written = DiffusionPipeline.from_pretrained(str(out))
    assert type(written).__name__ == "StableDiffusionXLPipeline"
    assert changed_components(sdxl, out, WEIGHTS) == {"text_encoder", "text_encoder_2"}
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora(components=["text_encoder", "text_encoder_2"])
    pipe.unload_lora_weights()
    for component in ("text_encoder", "text_encoder_2"):
        fused, erased = getattr(pipe, component).state_dict(), getattr(written, component).state_dict()
        assert max(float((fused[k] - erased[k]).abs().max()) for k in erased) < 1e-6, component
    record = json.loads((out / "erasure.json").read_text())
    assert record["trained_parameters"]["components"] == ["text_encoder", "text_encoder_2"] and record["processes"] == 2


def test_two_processes_erase_sdxl_like_one_with_the_same_global_batch(sdxl, tmp_path):
    """SalUn (a UNet method: saliency, masked training, the packed added conditions) on 2 CPU
    processes (torchrun, gloo) at batch 2 each vs 1 process at batch 4, one thread each."""
    env = {**os.environ, "PYTHONPATH": REPO, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    common = ["-m", "sd_erasure.erasure.cli", "erase", "--model", str(sdxl), "--concept", "a cat", "--num-images", "8",
              "--synthesis-steps", "2", "--steps", "4", *SMOKE_CHECK]
    one = subprocess.run([sys.executable, *common, "--batch-size", "4", "--output", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*torchrun(), *common, "--batch-size", "2", "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-8000:]
    assert json.loads((tmp_path / "two" / "erasure.json").read_text())["processes"] == 2
    assert_sharded_salun_matches_one_process(sdxl, tmp_path / "one", tmp_path / "two")
    assert changed_components(sdxl, tmp_path / "two", WEIGHTS) == {"unet"}


def test_spm_membrane_weighed_per_prompt_on_sdxl_gives_the_plain_pipelines_images_at_that_weight(sdxl, tmp_path):
    """SPM's facilitated transport on SDXL (its rate read from both encoders' token states): each
    prompt's image is plain SDXL's with the membrane at γ²."""
    from diffusers import StableDiffusionXLPipeline

    from sd_erasure.pipelines import StableDiffusionXLSPMPipeline

    args, _ = SMOKE_RUNS["spm"]
    assert erase_cli("--model", sdxl, "--concept", "a cat", "--output", tmp_path / "spm", "--method", "spm",
                     *args) in (0, 3)
    transport = StableDiffusionXLSPMPipeline.from_pretrained(sdxl)
    transport.load_membranes([str(tmp_path / "spm")])
    plain = StableDiffusionXLPipeline.from_pretrained(sdxl)
    plain.load_lora_weights(str(tmp_path / "spm"), adapter_name="cat")
    prompts = ["a photo of a cat", "a tree"]
    rates = transport.transport_rates(prompts)[:, 0]
    assert rates[0] == 1.0 and rates[1] < 1.0
    settings = dict(num_inference_steps=2, output_type="pt")
    for pipe in (transport, plain):
        pipe.set_progress_bar_config(disable=True)
    together = transport(prompts, generator=[torch.Generator().manual_seed(i) for i in range(2)], **settings).images
    for i, prompt in enumerate(prompts):
        plain.set_adapters(["cat"], [float(rates[i]) ** 2])
        alone = plain(prompt, generator=torch.Generator().manual_seed(i), **settings).images[0]
        torch.testing.assert_close(together[i], alone)


def test_resumed_sdxl_run_gives_the_uninterrupted_weights(sdxl, tmp_path):
    assert_resume_reproduces(sdxl, tmp_path)


def test_sdxl_card_names_the_sdxl_pipeline(sdxl_uce):
    from sd_erasure.erasure.hub import build_model_card

    card = build_model_card(str(sdxl_uce), "someone/tiny-sdxl-no-cat", license="openrail++")
    assert "stable-diffusion-xl" in card.data.tags and "`StableDiffusionXLPipeline`" in card.text


@pytest.fixture(scope="module")
def shapes_xl_uce(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-xl-uce") / "uce"
    assert erase_cli("--model", "shapes-xl", "--concept", "circle", "--output", out, "--method", "uce") == 0
    return out


def test_uce_erases_circle_from_the_bundled_sdxl_shapes_model_and_keeps_the_rest(shapes_xl_uce, tmp_path):
    """The shapes world on SDXL's architecture (`--model shapes-xl`): the judge no longer sees circles."""
    from sd_erasure.evaluation.metrics import Protocol
    from sd_erasure.evaluation.suite import evaluate_shapes

    out = shapes_xl_uce
    assert json.loads((out / "erasure.json").read_text())["self_check"]["erased"]
    metrics = evaluate_shapes(str(out), "circle", str(tmp_path / "report"), base="shapes-xl",
                              protocol=Protocol(images_per_prompt=2), show_progress=False)
    base, erased = metrics["base"], metrics["erased"]
    assert erased["UA"] >= base["UA"] + 0.9 and erased["IRA"] >= base["IRA"] - 0.05, metrics
    assert erased["CRA"] >= base["CRA"] - 0.05, metrics


def test_the_attack_runs_on_an_sdxl_erase(shapes_xl_uce, tmp_path):
    """`sd-erase attack` on the shapes-xl UCE erase (one prompt, a short budget): the plain prompt, the
    random-words control and the attack itself run through both text encoders, and the attacked prompt
    is text ending in the prompt, without the concept's word."""
    from sd_erasure.erasure.cli import main

    attack = tmp_path / "attack"
    assert main(["attack", "--suite", "shapes", "--concept", "circle", "--model", str(shapes_xl_uce),
                 "--output", str(attack), "--limit", "1", "--steps", "5", "--check-every", "5",
                 "--images-per-prompt", "1", "--no-calibration"]) == 0
    record = json.loads((attack / "prompts" / "000.json").read_text())
    attacked = record.get("attacked")
    assert attacked is not None, record  # UCE holds the plain prompt, so the attack ran
    prefix, plain = attacked["adversarial_prompt"].rsplit(" " + record["plain"]["prompt"], 1)
    assert prefix and not plain and "circle" not in prefix and attacked["steps"] == 5
    metrics = json.loads((attack / "metrics.json").read_text())
    assert metrics["prompts"] == 1 and metrics["base"] == "shapes-xl", metrics  # the erase's own base draws the targets
