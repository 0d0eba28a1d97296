"""--adapter lora: the training methods train a peft LoRA on their layers in place of the weights."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, erase_cli, unet_weights
from test_lora_export import fused
from test_methods import changed_tensors

TINY = {  # short runs on the tiny random pipeline (its self-check cannot tell: exit 0 or 3): a frozen base
    # with the adapters off (ESD), the text encoder (AdvUnlearn); SalUn's masked layers and resume: below
    "esd": ["--steps", "3", "--synthesis-steps", "4"],
    "advunlearn": ["--steps", "3", "--warmup-steps", "1", "--attack-steps", "2", "--attack-tokens", "2",
                   "--num-images", "4", "--synthesis-steps", "4", "--batch-size", "2"],
}
FILES = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}


def assert_the_lora_is_the_whole_erasure(base, out, component="unet", rank=2):
    """A LoRA trained on `component`: only its layers' weights moved, and plain diffusers' load_lora_weights
    + fuse_lora reproduces the pipeline the run wrote beside it."""
    record = json.loads((out / "erasure.json").read_text())
    lora = record["lora"]
    assert record["adapter"]["kind"] == "lora" and lora["trained"]
    assert {layer["rank"] for layer in lora["layers"].values()} == {rank}
    assert lora["adapter_bytes"] < lora["dense_bytes"] and not lora["not_in_adapter"]
    assert all(name.startswith(component + ".") for name in lora["layers"])
    in_adapter = {name.removeprefix(component + ".") + ".weight" for name in lora["layers"]}
    for part, file in FILES.items():  # every other tensor of the pipeline is bit-identical
        assert changed_tensors(base, out, part, file) == (in_adapter if part == component else set())
    loaded = getattr(fused(base, out), component).state_dict()
    written = load_file(os.path.join(out, component, FILES[component]))
    assert max(float((loaded[k] - written[k]).abs().max()) for k in written) <= 1e-6


@pytest.mark.parametrize("method", list(TINY))
def test_a_trained_lora_is_the_whole_erasure_and_loads_with_plain_diffusers(tiny_sd, tmp_path, method):
    out = tmp_path / method
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, "--method", method,
                     "--adapter", "lora", "--lora-rank", "2", "--learning-rate", "1e-3", "--output-format", "both",
                     *TINY[method]) in (0, 3)
    assert_the_lora_is_the_whole_erasure(tiny_sd, out, "text_encoder" if method == "advunlearn" else "unet")


def test_a_salun_lora_on_the_masked_layers_resumes_to_the_same_adapter(tiny_sd, tmp_path):
    from sd_erasure import SalUnConfig, erase

    settings = dict(model=str(tiny_sd), concept="nudity", adapter="lora", lora_rank=2, learning_rate=1e-3,
                    checkpointing_steps=2, num_images=16, synthesis_steps=4, steps=6, batch_size=4)
    whole = tmp_path / "whole"
    erase(SalUnConfig(**settings, output_dir=str(whole), output_format="both"), show_progress=False)
    assert_the_lora_is_the_whole_erasure(tiny_sd, whole)

    def ctrl_c_at_step_3(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        erase(SalUnConfig(**settings, output_dir=str(interrupted)), step_callback=ctrl_c_at_step_3,
              show_progress=False)
    erase(SalUnConfig(**settings, output_dir=str(interrupted), resume_from_checkpoint="latest"), show_progress=False)
    assert not (interrupted / "unet").exists()  # the default output of a LoRA run is the adapter alone
    a = load_file(interrupted / "pytorch_lora_weights.safetensors")
    b = load_file(whole / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # B starts at zero: it trained
    # what `sd-erase evaluate` and `attack` load for an adapter output: its base with the LoRA fused
    from sd_erasure.erasure.model_io import load_model_or_adapter

    loaded, written = load_model_or_adapter(str(interrupted)).unet.state_dict(), unet_weights(whole)
    assert max(float((loaded[k] - written[k]).abs().max()) for k in written) <= 1e-6


@pytest.mark.parametrize("args, message", [
    (["--lora-alpha", "8"], "--lora-alpha configures a trained LoRA: add --adapter lora"),
    (["--method", "salun-soft", "--adapter", "lora"], "--adapter lora is not available for salun-soft: its soft mask"),
    (["--method", "scissorhands", "--adapter", "lora"], "--adapter lora is not available for scissorhands"),
    (["--adapter", "lora", "--concept", "a dog", "--sequential"], "--adapter lora trains one adapter per run"),
    (["--method", "uce", "--adapter", "lora"], "--adapter is an option of"),
    (["--method", "esd", "--adapter", "lora", "--lora-target-module", "no_such_layer", "--steps", "1"],
     "matches none of the"),
])
def test_bad_lora_training_options_get_one_line_and_no_output(tiny_sd, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, *args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp_path / "out.incomplete").exists()
