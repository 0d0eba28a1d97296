"""--output-format lora|both: the erasure as a LoRA that plain diffusers' load_lora_weights takes."""

import json

import pytest
import torch

from conftest import FAST, erase_cli, unet_weights


def fused(base_folder, lora_folder):
    """The base pipeline with the LoRA loaded and fused, as a user of plain diffusers would do it."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(base_folder))
    pipeline.load_lora_weights(str(lora_folder))
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    return pipeline


def test_uce_lora_reproduces_the_erased_weights_exactly_at_a_fraction_of_their_size(tiny_sd, tmp_path):
    out = tmp_path / "uce"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "uce",
                     "--output-format", "both") == 0
    record = json.loads((out / "erasure.json").read_text())["lora"]
    assert (out / "model_index.json").is_file() and (out / record["file"]).is_file()
    assert {layer["rank"] for layer in record["layers"].values()} == {1}  # one concept: a rank-1 edit per layer
    assert record["adapter_bytes"] < record["dense_bytes"] / 5 and not record["not_in_adapter"]
    assert record["max_weight_error"] <= 1e-6
    erased, lora = unet_weights(out), fused(tiny_sd, out).unet.state_dict()
    assert max(float((lora[k] - erased[k]).abs().max()) for k in erased) <= 1e-5


def test_lora_only_output_holds_the_adapter_and_says_what_a_lora_cannot_hold(tiny_sd, tmp_path):
    out = tmp_path / "salun"
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, "--output-format", "lora",
                     "--lora-rank", "4", *FAST) == 0
    assert not (out / "model_index.json").exists() and not (out / "unet").exists()
    record = json.loads((out / "erasure.json").read_text())
    lora = record["lora"]
    assert lora["rank"] == 4 and max(layer["rank"] for layer in lora["layers"].values()) == 4
    assert all(0 <= layer["relative_error"] < 1 for layer in lora["layers"].values())
    assert lora["not_in_adapter"] and all(not name.endswith("weight") or "norm" in name
                                          for name in lora["not_in_adapter"])  # biases and norms
    base = unet_weights(tiny_sd)
    moved = fused(tiny_sd, out).unet.state_dict()
    in_adapter = {name.removeprefix("unet.") + ".weight" for name in lora["layers"]}
    assert all(not torch.equal(moved[k], base[k]) for k in in_adapter)
    assert all(torch.equal(moved[k], base[k]) for k in base if k not in in_adapter)  # nothing else moves
    from sd_erasure.erasure.folders import is_adapter_only

    assert is_adapter_only(str(out))  # what `sd-erase push` publishes as a LoRA (tests/test_hub.py)


def test_lora_options_without_a_lora_or_without_weights_get_one_line(tiny_sd, tmp_path, capsys):
    for args, message in ((["--lora-rank", "4"], "--lora-rank sets the adapter's rank: add --output-format"),
                          (["--method", "seot", "--output-format", "lora"], "SEOT changes no weight")):
        assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", tmp_path / "out", *args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "out").exists()


def test_apply_fuses_the_adapter_into_a_checkpoint_and_refuses_another_architecture(tiny_sd, tmp_path, capsys):
    from sd_erasure.erasure.cli import main

    made = tmp_path / "uce"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", made, "--method", "uce",
                     "--output-format", "both") == 0
    out = tmp_path / "applied"
    assert main(["apply", str(made), "--model", str(tiny_sd), "--output", str(out)]) == 0
    erased, applied = unet_weights(made), unet_weights(out)
    assert max(float((applied[k] - erased[k]).abs().max()) for k in erased) <= 1e-5
    record = json.loads((out / "erasure.json").read_text())
    assert record["adapter_made_on"]["id"] == str(tiny_sd) and "self_check" not in record
    assert record["changed"]["unet"]["tensors"] == len(json.loads((made / "erasure.json").read_text())["lora"]["layers"])

    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main(["apply", str(made), "--model", "shapes", "--output", str(refused)]) == 2  # 64-wide text, not 32
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and "the adapter was made on" in err[0] and "apply it to a checkpoint with the architecture of" in err[0], err
    assert not refused.exists() and not (tmp_path / "refused.incomplete").exists()


def test_the_fast_factorization_keeps_what_the_full_svd_keeps():
    """lora_export.low_rank_svd's randomized path must give the rank and error the full SVD gives:
    low-rank deltas (UCE's), one under the float32 floor of its weight, and full-rank ones (SalUn's)."""
    from sd_erasure.erasure.lora_export import EXACT_TOLERANCE, lora_factors

    generator = torch.Generator().manual_seed(0)
    weight = 0.02 * torch.randn(320, 192, generator=generator)

    def product(rank, scale):
        return (weight + scale * torch.randn(320, rank, generator=generator)
                @ torch.randn(rank, 192, generator=generator)) - weight

    sparse = 1e-3 * torch.randn(320, 192, generator=generator) * (torch.rand(320, 192, generator=generator) < 0.5)
    for delta in (product(1, 1e-3), product(3, 1e-4), product(20, 1.0), product(1, 1e-7), sparse):
        s = torch.linalg.svd(delta).S
        full_rank = int((s > s[0] * EXACT_TOLERANCE).sum())
        a, b, error = lora_factors(delta, None)
        assert a.shape[0] == full_rank
        assert error <= float(s[full_rank:].norm() / s.norm()) + 1e-5
        assert error == pytest.approx(float(torch.linalg.norm(delta - b @ a) / delta.norm()), rel=1e-3)
