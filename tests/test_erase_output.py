"""What a user of `sd-erase erase` relies on: a stock pipeline folder, real edits, untouched non-salient weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import FAST, erase_cli, unet_weights
from sd_erasure.erasure.saliency import load_mask


def test_output_is_a_complete_stock_pipeline_folder(erased):
    assert not os.path.exists(str(erased) + ".incomplete")
    names = set(os.listdir(erased))
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler",
            "saliency_mask.safetensors", "erasure.json"} <= names
    assert not [n for n in names if n.startswith("checkpoint-")]
    index = json.loads((erased / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index.get("safety_checker") in (None, [None, None])  # the base had none
    weight_files = [f for _, _, files in os.walk(erased) for f in files if f.endswith((".bin", ".ckpt", ".pt", ".pth"))]
    assert weight_files == []  # safetensors only
    assert (erased / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_output_loads_and_generates_with_plain_diffusers_offline(erased):
    """A fresh interpreter that never imports sd-erasure loads the folder and makes an image."""
    script = (
        "import sys, torch\n"
        "from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(erased)!r})\n"
        "assert type(pipe).__name__ == 'StableDiffusionPipeline', type(pipe)\n"
        "image = pipe('a photo of a person', num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]\n"
        "assert image.size == (16, 16)\n"
        "assert not any(m.split('.')[0] in ('erasure', 'pipelines') for m in sys.modules), 'sd-erasure was imported'\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_salient_weights_changed_and_every_other_weight_is_bit_identical(tiny_sd, erased):
    base, new, mask = unet_weights(tiny_sd), unet_weights(erased), load_mask(erased / "saliency_mask.safetensors")
    assert set(mask) == set(base) == set(new)
    changed_salient = salient = 0
    for name, before in base.items():
        after, m = new[name], mask[name]
        assert m.dtype == torch.bool and m.shape == before.shape
        # bitwise comparison: equal floats with different bits (e.g. -0.0) would count as changed
        assert torch.equal(before[~m].view(torch.int32), after[~m].view(torch.int32)), f"non-salient entries of {name} changed"
        changed_salient += int((before[m] != after[m]).sum())
        salient += int(m.sum())
    assert salient > 0 and changed_salient / salient > 0.5, (changed_salient, salient)


def test_only_the_unet_changes(tiny_sd, erased):
    from safetensors.torch import load_file

    for component in ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        before, after = load_file(tiny_sd / component), load_file(erased / component)
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_mask_has_the_requested_density_and_record_says_so(erased):
    mask = load_mask(erased / "saliency_mask.safetensors")
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.5 * total)
    record = json.loads((erased / "erasure.json").read_text())
    assert record["mask"]["density"] == round(0.5 * total) / total
    assert set(record["mask"]["layer_density"]) == set(mask)


def test_erasure_json_records_the_run(tiny_sd, erased):
    record = json.loads((erased / "erasure.json").read_text())
    assert record["method"] == "salun" and record["concept"] == "nudity"
    assert record["prompts"]["forget"] == ["a photo of a nude person"]
    assert record["prompts"]["misaligned"] == ["a photo of a person wearing clothes"]
    assert record["base_model"] == {"id": str(tiny_sd), "revision": None, "family": "sd"}
    hp = record["hyperparameters"]
    assert (hp["learning_rate"], hp["retain_loss_weight"], hp["mask_ratio"], hp["steps"]) == (1e-5, 0.1, 0.5, 6)
    assert set(record["seconds"]) == {"self_check", "data", "saliency", "unlearning", "save"}
    assert set(record["peak_memory"]["bytes"]) == set(record["seconds"])
    assert record["versions"]["sd-erasure"]
    assert record["data"] == {"forget_size": 16, "retain_size": 16}
    # random weights tie no prompt to its images: the self-check says it cannot tell (and the CLI exits 0)
    assert record["self_check"]["margin_remaining"] is None and record["self_check"]["concept_margin"]["base"] is not None


@pytest.mark.parametrize("ranking", ["scope", "unet"])
def test_xattn_scope_changes_cross_attention_only(tiny_sd, tmp_path, ranking):
    out = tmp_path / "xattn"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--scope", "xattn",
                     "--mask-ratio", "0.25", "--mask-ranking", ranking, *FAST) == 0
    base, new, mask = unet_weights(tiny_sd), unet_weights(out), load_mask(out / "saliency_mask.safetensors")
    in_scope = [n for n in mask if "attn2" in n]
    assert all(not mask[n].any() and torch.equal(base[n], new[n]) for n in mask if "attn2" not in n)
    scope_total, unet_total = sum(mask[n].numel() for n in in_scope), sum(m.numel() for m in mask.values())
    kept = sum(int(mask[n].sum()) for n in in_scope)
    if ranking == "scope":  # exactly the top quarter of the cross-attention weights
        assert kept == round(0.25 * scope_total)
    else:  # the official rule: the cross-attention share of the UNet's top quarter
        assert 0 < kept < round(0.25 * unet_total) and kept != round(0.25 * scope_total)
    assert any(not torch.equal(base[n], new[n]) for n in in_scope)


def test_second_run_reuses_the_synthesized_data(tiny_sd, erased, tmp_path):
    cache = os.environ["SD_ERASURE_CACHE"]
    files = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
             for d, _, fs in os.walk(cache) for f in fs if f.startswith("batch-")}
    assert files
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", tmp_path / "again", *FAST) == 0
    after = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
             for d, _, fs in os.walk(cache) for f in fs if f.startswith("batch-")}
    assert after == files  # nothing regenerated, nothing new
    # and the same data + seed give the same erased weights
    first, second = unet_weights(erased), unet_weights(tmp_path / "again")
    assert all(torch.equal(first[k], second[k]) for k in first)
