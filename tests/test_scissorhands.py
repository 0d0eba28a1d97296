"""ScissorHands behind the one interface: the reset and the repair change what they say, the
official protocol defaults, bad input."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import erase_cli, unet_weights
from test_methods import assert_stock_output, changed_tensors

SHS_FAST = ["--num-images", "8", "--synthesis-steps", "2", "--steps", "3", "--batch-size", "4",
            "--saliency-images", "4", "--saliency-batch-size", "4"]


def test_scissorhands_resets_the_most_connected_entries_and_nothing_else(tiny_sd, tmp_path):
    """At learning rate 0 the repair moves nothing: the entries that changed are exactly the reset ones."""
    out = tmp_path / "reset-only"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "scissorhands",
                     "--scope", "xattn", "--reset-ratio", "0.05", "--learning-rate", "0", *SHS_FAST) in (0, 3)
    record = assert_stock_output(out)
    reset = load_file(out / "reset_mask.safetensors")
    base, new = unet_weights(tiny_sd), unet_weights(out)
    for name, mask in reset.items():
        assert torch.equal(base[name] != new[name], mask) or not mask.any() and torch.equal(base[name], new[name]), name
    in_scope = [n for n in reset if "attn2" in n]
    assert not any(reset[n].any() for n in reset if n not in in_scope)  # the reset stays inside the scope
    share = sum(int(reset[n].sum()) for n in in_scope) / sum(reset[n].numel() for n in in_scope)
    assert share == pytest.approx(0.05, abs=1e-3)
    biases = [n for n in in_scope if n.endswith("bias") and reset[n].any()]
    assert all(torch.all(new[n][reset[n]] == 0) for n in biases)  # a fresh layer's biases
    assert record["reset"]["init"] == "trunc-normal" and record["hyperparameters"]["forget_objective"] == "ascent"
    assert not changed_tensors(tiny_sd, out, "text_encoder", "model.safetensors")


def test_scissorhands_repair_trains_only_its_scope(tiny_sd, tmp_path):
    out = tmp_path / "repair"
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, "--method", "scissorhands",
                     "--scope", "noxattn", "--learning-rate", "1e-3", *SHS_FAST) in (0, 3)
    record = assert_stock_output(out)
    changed = changed_tensors(tiny_sd, out)
    assert changed and not any("attn2" in n for n in changed)  # cross-attention bit-identical
    assert record["final_losses"]["forget_loss"] > 0 and record["reset"]["init"] == "kaiming-uniform"
    assert record["prompts"]["misaligned"] == ["a photo of a person wearing clothes"]


def test_scissorhands_defaults_follow_each_official_script():
    from sd_erasure.erasure.scissorhands import ScissorHandsConfig

    nudity, sources = ScissorHandsConfig(model="m", concept="nudity").with_defaults({})
    assert (nudity.forget_objective, nudity.reset_init, nudity.saliency_guidance_scale) == ("misaligned", "kaiming-uniform", 0.0)
    assert (nudity.reset_ratio, nudity.learning_rate, nudity.scope, nudity.steps, nudity.batch_size) == (0.01, 5e-5, "full", 250, 16)
    assert sources["forget_objective"] == "official default"
    assert nudity.unlearning_objective() == (0.1, 1.0, "misaligned")
    objects, _ = ScissorHandsConfig(model="m", concept="a cat", reset_init="kaiming-uniform").with_defaults({})
    assert (objects.forget_objective, objects.reset_init, objects.saliency_guidance_scale) == ("ascent", "kaiming-uniform", 7.5)
    assert objects.unlearning_objective() == (-0.1, 1.0, "ascent")


def test_reset_draws_depend_on_the_seed_only():
    from sd_erasure.erasure.scissorhands import reset_weights

    def reset(seed):
        layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        with torch.no_grad():
            for p in layer.parameters():
                p.fill_(5.0)
        mask = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.5 for n, p in layer.named_parameters()}
        reset_weights(layer, mask, "kaiming-uniform", seed)
        return dict(layer.named_parameters()), mask

    first, mask = reset(0)
    assert torch.equal(first["0.weight"], reset(0)[0]["0.weight"]) and not torch.equal(first["0.weight"], reset(1)[0]["0.weight"])
    assert torch.all(first["0.weight"][~mask["0.weight"]] == 5.0)  # unmasked entries keep their values
    assert first["0.weight"][mask["0.weight"]].abs().max() <= (6 / 8) ** 0.5  # Kaiming-uniform's bound, fan-in 8
    assert torch.all(first["0.bias"][mask["0.bias"]] == 0) and torch.all(first["1.weight"][mask["1.weight"]] == 1)


@pytest.mark.parametrize("args, message", [
    (["--reset-ratio", "1"], "--reset-ratio 1.0 is outside [0, 1)"),
    (["--forget-objective", "negate"], "invalid choice: 'negate' (choose from 'misaligned', 'ascent')"),
    (["--saliency-images", "0"], "--saliency-images must be positive, got 0"),
])
def test_scissorhands_bad_options_get_one_line_and_no_output(tiny_sd, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    try:
        code = erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "scissorhands", *args)
    except SystemExit as exit_:  # argparse's own choice check exits from inside main()
        code = exit_.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
