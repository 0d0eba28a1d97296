"""SPM: a rank-1 membrane on the UNet's transformer blocks, loaded and stacked with plain diffusers,
and erasing circle in the shapes world."""

import json

import pytest
import torch

from conftest import erase_cli, unet_weights
from test_lora_training import assert_the_lora_is_the_whole_erasure

# trajectories of the frozen base model, sampled once: the cheapest run on the tiny pipeline
SHORT = ["--sample-from", "base", "--num-images", "4", "--synthesis-steps", "2", "--steps", "3",
         "--self-check-images", "4"]


@pytest.fixture(scope="module")
def membranes(tiny_sd, tmp_path_factory):
    """SPM erases of two concepts of the tiny pipeline, each written as a LoRA beside its fused pipeline."""
    folder = tmp_path_factory.mktemp("spm")
    for concept in ("a cat", "a dog"):
        assert erase_cli("--model", tiny_sd, "--concept", concept, "--output", folder / concept, "--method", "spm",
                         "--output-format", "both", *SHORT) == 0
    return folder


def test_the_membrane_is_rank_one_on_every_layer_of_the_transformer_blocks(tiny_sd, membranes):
    from diffusers import UNet2DConditionModel

    out = membranes / "a cat"
    assert_the_lora_is_the_whole_erasure(tiny_sd, out, rank=1)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    in_blocks = {f"unet.{name}" for name, layer in unet.named_modules()
                 if ".attentions." in name and isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))}
    layers = set(json.loads((out / "erasure.json").read_text())["lora"]["layers"])
    assert layers == in_blocks
    assert {n.rsplit(".", 1)[-1] for n in layers} >= {"proj_in", "proj_out", "to_q", "to_k", "to_v", "0", "proj", "2"}


def test_membranes_of_two_concepts_stack_in_plain_diffusers(tiny_sd, membranes):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_sd))
    for name in ("a cat", "a dog"):
        pipeline.load_lora_weights(str(membranes / name), adapter_name=name.replace(" ", "_"))
    pipeline.set_adapters(["a_cat", "a_dog"])
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    stacked = pipeline.unet.state_dict()
    base, cat, dog = (unet_weights(f) for f in (tiny_sd, membranes / "a cat", membranes / "a dog"))
    assert any(not torch.equal(cat[k], dog[k]) for k in base)  # two different membranes
    assert max(float((stacked[k] - (base[k] + (cat[k] - base[k]) + (dog[k] - base[k]))).abs().max())
               for k in base) <= 1e-6


def test_spm_erases_circle_in_the_shapes_world(tmp_path):
    """The shapes model's profile settings for SPM at half its steps (UA 0.89 measured; 1.00 at the
    profile's 400); the judge at 2 images per prompt."""
    from sd_erasure.erasure.self_check import EXIT_NOT_ERASED
    from sd_erasure.evaluation.metrics import Protocol
    from sd_erasure.evaluation.suite import evaluate_shapes

    out = tmp_path / "spm"
    code = erase_cli("--model", "shapes", "--concept", "circle", "--output", out, "--method", "spm", "--steps", "200")
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "unet").exists()
    metrics = evaluate_shapes(str(out), "circle", str(tmp_path / "report"), protocol=Protocol(images_per_prompt=2),
                              show_progress=False)
    base, erased = metrics["base"], metrics["erased"]
    assert erased["UA"] >= base["UA"] + 0.8 and erased["IRA"] >= base["IRA"] - 0.05, metrics
    assert erased["CRA"] >= base["CRA"] - 0.05, metrics
    check = json.loads((out / "erasure.json").read_text())["self_check"]
    assert code == (0 if check["erased"] else EXIT_NOT_ERASED) and check["retain_kept"], (code, check)
    # its card says how to load the membrane with plain diffusers, and with facilitated transport
    from sd_erasure.erasure.hub import build_model_card

    card = build_model_card(str(out), "someone/shapes-spm-circle", license="mit").text
    assert "pipe.load_lora_weights(\"someone/shapes-spm-circle\")" in card
    assert "StableDiffusionSPMPipeline.from_pretrained" in card and "load_membranes([\"someone/shapes-spm-circle\"])" in card


def official_rates(pipeline, prompt: str, concepts: list[str]) -> list[float]:
    """infer_spm.py's `clipcos_tokenuni` rate per concept, written out with plain transformers calls:
    cosine of the flattened padded token states, or the share of the concept's tokens in the prompt."""
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder

    def states(text):
        ids = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            return encoder(ids.input_ids)[0].flatten()

    def words(text):
        return set(tokenizer(text).input_ids) - set(tokenizer.all_special_ids)

    return [max(float(torch.nn.functional.cosine_similarity(states(prompt), states(c), dim=0)),
                len(words(prompt) & words(c)) / len(words(c))) for c in concepts]


def test_facilitated_transport_weighs_each_membrane_by_the_prompts_closeness_to_its_concept(tiny_sd, membranes):
    """The SPM pipeline's images for a prompt are the plain pipeline's with each membrane at γ² (the
    official code scales both factors by γ), γ the official rate; prompts of one call keep their order
    and seeds."""
    from diffusers import StableDiffusionPipeline

    from sd_erasure.pipelines.spm_transport import StableDiffusionSPMPipeline

    transport = StableDiffusionSPMPipeline.from_pretrained(str(tiny_sd))
    transport.load_membranes([str(membranes / "a cat"), str(membranes / "a dog")])
    plain = StableDiffusionPipeline.from_pretrained(str(tiny_sd))
    for name in ("a cat", "a dog"):
        plain.load_lora_weights(str(membranes / name), adapter_name=name.replace(" ", "_"))
    prompts = ["a photo of a cat", "a tree", "a photo of a cat"]
    rates = transport.transport_rates(prompts)
    assert rates[0, 0] == 1.0 and rates[0, 1] < 1.0  # every token of "a cat" is in the prompt, not all of "a dog"
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(rates[row], torch.tensor(official_rates(plain, prompt, ["a cat", "a dog"])))
    assert rates[1].max() < 1.0

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(len(prompts))]

    settings = dict(num_inference_steps=2, output_type="pt")
    for pipe in (transport, plain):
        pipe.set_progress_bar_config(disable=True)
    together = transport(prompts, generator=generators(), **settings).images
    for i, prompt in enumerate(prompts):
        plain.set_adapters(["a_cat", "a_dog"], (rates[i] ** 2).tolist())
        alone = plain(prompt, generator=generators()[i], **settings).images[0]
        torch.testing.assert_close(together[i], alone)
    plain.set_adapters(["a_cat", "a_dog"], [1.0, 1.0])
    full = plain(prompts[1], generator=generators()[1], **settings).images[0]
    assert not torch.allclose(together[1], full)  # the far prompt is not the full-strength membranes' image


def test_facilitated_transport_of_an_output_that_is_no_spm_membrane_is_refused_in_one_line(tiny_sd, tmp_path, capsys):
    from sd_erasure.erasure.cli import main

    out = tmp_path / "report"
    assert main(["evaluate", "--suite", "shapes", "--model", str(tiny_sd), "--concept", "circle",
                 "--output", str(out), "--facilitated-transport"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and "is no adapter output" in err[0], err
    assert not out.exists()
