"""FMN (Forget-Me-Not) behind the one interface: which tokens it re-steers, that its attention probe
leaves the UNet's prediction as it was, what it trains, bad input."""

import pytest
import torch

from conftest import erase_cli
from test_methods import assert_stock_output, changed_tensors

FMN_FAST = ["--num-images", "4", "--synthesis-steps", "2", "--steps", "3", "--batch-size", "2", "--learning-rate", "1e-3"]


def test_concept_tokens_are_what_the_forget_prompt_has_and_its_pair_lacks(tiny_sd):
    from transformers import CLIPTokenizer

    from sd_erasure.erasure.errors import EraseError
    from sd_erasure.erasure.forget_me_not import concept_positions

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")

    def kept(prompt, paired, end_tokens=False):
        mask = concept_positions(tokenizer, [prompt], [paired], end_tokens)[prompt]
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length).input_ids
        return [tokenizer.decode([i]) for i, keep in zip(ids, mask) if keep]

    assert kept("a photo of a nude person", "a photo of a person wearing clothes") == ["nude"]
    assert kept("a photo of a cat", "a photo") == ["of", "a", "cat"]
    with_end = kept("a photo of a cat", "a photo of a dog", end_tokens=True)
    assert with_end[0] == "cat" and set(with_end[1:]) == {tokenizer.eos_token}  # the end token, padding included
    with pytest.raises(EraseError, match="has no token that its misaligned prompt"):
        kept("a photo", "a photo of a dog")


def test_explicit_attention_and_the_probe_leave_the_prediction_unchanged(tiny_sd):
    from diffusers import UNet2DConditionModel

    from sd_erasure.erasure.forget_me_not import ConceptAttentionProbe
    from sd_erasure.pipelines.suppress_eot import ExplicitAttention

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").eval()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        expected = unet(latents, t, context).sample
        probe = ConceptAttentionProbe()
        probe.positions = torch.zeros(2, 77, dtype=torch.bool)
        probe.positions[0, 3] = True
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.set_processor(ExplicitAttention(probe.observe))
            elif name.endswith("attn1"):  # SEOT records self-attention with the same processor
                module.set_processor(ExplicitAttention(lambda probs, is_cross: None))
        got = unet(latents, t, context).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert len(probe.squares) == sum(name.endswith("attn2") for name, _ in unet.named_modules())
    assert all(float(s) > 0 for s in probe.squares)


@pytest.mark.parametrize("scope", ["xattn", "full"])
def test_fmn_trains_its_scope_and_saves_a_stock_pipeline(tiny_sd, tmp_path, scope):
    out = tmp_path / f"fmn-{scope}"
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, "--method", "fmn",
                     "--scope", scope, *FMN_FAST) in (0, 3)
    record = assert_stock_output(out)  # plain diffusers loads it: the probe is not saved with the UNet
    changed = changed_tensors(tiny_sd, out)
    assert changed and (all("attn2" in n for n in changed) if scope == "xattn" else any("attn2" not in n for n in changed))
    assert not changed_tensors(tiny_sd, out, "text_encoder", "model.safetensors")
    assert record["concept_tokens"] == {"a photo of a nude person": "nude"}
    assert record["hyperparameters"]["include_end_tokens"] is True and record["final_losses"]["loss"] > 0


@pytest.mark.parametrize("args, message", [
    (["--misaligned-prompt", "a photo of a cat"], "FMN cannot tell which words name the concept"),
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1.0"),
    (["--scope", "noxattn"], "--scope 'noxattn' is not one of full, xattn"),
])
def test_fmn_bad_options_get_one_line_and_no_output(tiny_sd, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "fmn", *args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp_path / "out.incomplete").exists()


def test_fmn_erases_circle_on_the_shapes_world_and_the_self_check_flags_what_it_breaks(tmp_path):
    """The profile's FMN erases circle but breaks colour binding (README: no usable trade-off on this
    model); the judge-free self-check must say so through its retain verdict, not call the run clean."""
    import json

    from sd_erasure.evaluation.metrics import Protocol
    from sd_erasure.evaluation.suite import evaluate_shapes

    out = tmp_path / "fmn"
    assert erase_cli("--model", "shapes", "--concept", "circle", "--output", out, "--method", "fmn") == 0
    metrics = evaluate_shapes(str(out), "circle", str(tmp_path / "report"), protocol=Protocol(images_per_prompt=2),
                              show_progress=False)
    base, erased = metrics["base"], metrics["erased"]
    assert erased["UA"] >= base["UA"] + 0.5 and erased["CRA"] < base["CRA"] - 0.2, metrics
    check = json.loads((out / "erasure.json").read_text())["self_check"]
    assert check["erased"] and not check["retain_kept"], check
