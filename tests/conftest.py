"""Tests run offline on tiny Stable Diffusion pipelines with random weights, built here."""

import os
import tempfile

# Before huggingface_hub is imported: it reads these at import time.
_home = tempfile.mkdtemp(prefix="sd-erasure-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_home, "hf")
os.environ["SD_ERASURE_CACHE"] = os.path.join(_home, "cache")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# as the CLI does: keep library warnings out of the one-line error messages under test
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

torch.set_num_threads(2)

# Small enough for seconds on 2 CPU cores, large enough that the mask and losses are real.
FAST = ["--num-images", "16", "--synthesis-steps", "4", "--steps", "6", "--batch-size", "4"]


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny StableDiffusionPipeline folder with random weights (what `sd-erase random-pipeline` writes)."""
    from sd_erasure.erasure.cli import main

    folder = tmp_path_factory.mktemp("base") / "tiny-sd"
    assert main(["random-pipeline", str(folder)]) == 0
    return folder


def erase_cli(*args) -> int:
    from sd_erasure.erasure.cli import main

    return main(["erase", *map(str, args)])


@pytest.fixture(scope="session")
def erased(tiny_sd, tmp_path_factory):
    """One SalUn erase of 'nudity' through the CLI, shared by the tests that inspect its output."""
    out = tmp_path_factory.mktemp("erased") / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, *FAST) == 0
    return out


def unet_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
