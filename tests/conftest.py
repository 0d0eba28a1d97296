"""Tests run offline on tiny Stable Diffusion pipelines with random weights, built here."""

import os
import sys
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

# The suite runs in one pytest-xdist worker per core (setup.cfg): one thread each, since a worker's
# tiny models keep a second thread busy only part of the time; alone, 2 threads.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: PYTHONPATH of subprocesses

# Small enough for seconds on 2 CPU cores, large enough that the mask and losses are real; the
# self-check on 4 images (a random-weight model gives it nothing to tell either way).
FAST = ["--num-images", "16", "--synthesis-steps", "4", "--steps", "6", "--batch-size", "4", "--self-check-images", "4"]


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


@pytest.fixture(scope="session")
def shapes_uce_circle(tmp_path_factory):
    """UCE's erase of circle from the bundled shapes model with its profile, and the CLI's exit code:
    shared by the tests that attack or judge it (erasing is seconds, but three times is not)."""
    out = tmp_path_factory.mktemp("shapes-uce") / "uce-circle"
    return out, erase_cli("--model", "shapes", "--method", "uce", "--concept", "circle", "--output", out)


def torchrun(processes: int = 2) -> list[str]:
    """The command that starts a module in `processes` CPU processes; --standalone picks a free port,
    so runs in parallel test workers do not meet."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def unet_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))


def assert_sharded_salun_matches_one_process(base, one, two) -> None:
    """SalUn run on 2 processes (half the batch each) against 1 process (the whole batch): the same
    saliency mask, and UNet weights that differ only by gradient rounding, never outside the mask."""
    masks = [load_file(os.path.join(run, "saliency_mask.safetensors")) for run in (one, two)]
    assert masks[0].keys() == masks[1].keys() and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    base, first, second = unet_weights(base), unet_weights(one), unet_weights(two)
    assert any(not torch.equal(first[k], base[k]) for k in base)
    differ = 0
    for name in base:
        # Adam moves an entry by about the learning rate (1e-5) per step: the runs differ by far less.
        # The gradient sums differ in rounding (gloo's order), and Adam's m/√v amplifies that where a
        # gradient is near 0: on one machine 1 entry of 9216 differed by 1.5e-6. So: every entry within
        # one step's size, and all but a few in 10,000 within a tenth of it.
        difference = (second[name] - first[name]).abs()
        assert difference.max() < 1e-5, name
        differ += int((difference > 1e-6).sum())
        frozen = ~masks[0][name]
        assert torch.equal(second[name][frozen], base[name][frozen])
    assert differ <= 1e-4 * sum(first[name].numel() for name in base), differ


# Each registered method's cheapest run for the model-family tests (test_sd2, test_sdxl), and the one
# component it changes (None: no weights, SEOT). {clip}: a CLIP model matching the base's text encoder.
SMOKE_CHECK = ["--self-check-images", "4"]
SMOKE_TRAINING = ["--num-images", "8", "--synthesis-steps", "2", "--steps", "3", "--batch-size", "2", *SMOKE_CHECK]
SMOKE_RUNS = {
    "salun": (SMOKE_TRAINING, "unet"), "salun-soft": (SMOKE_TRAINING, "unet"), "esd": (SMOKE_TRAINING, "unet"),
    "ca": (SMOKE_TRAINING, "unet"), "fmn": (SMOKE_TRAINING, "unet"), "scissorhands": (SMOKE_TRAINING, "unet"),
    "erasediff": (SMOKE_TRAINING, "unet"), "advunlearn": (SMOKE_TRAINING, "text_encoder"), "uce": (SMOKE_CHECK, "unet"),
    "slug": (["--num-images", "8", "--synthesis-steps", "2", "--clip-model", "{clip}", *SMOKE_CHECK], "text_encoder"),
    "seot": (SMOKE_CHECK, None),
    "spm": ([*SMOKE_TRAINING, "--sample-from", "base", "--output-format", "both"], "unet"),
}


def random_clip(text_encoder, folder):
    """A CLIP model whose text tower is `text_encoder` (its projection too, where it has one), with a
    small random image tower (mocked: no real CLIP model can be downloaded here; SLUG only needs the
    towers to agree)."""
    from transformers import CLIPImageProcessor

    from sd_erasure.erasure.slug import clip_with_text_encoder

    with torch.random.fork_rng():  # the same random image tower whatever ran before
        torch.manual_seed(0)
        clip = clip_with_text_encoder(text_encoder, dict(image_size=16, patch_size=4, hidden_size=32,
                                                         intermediate_size=64, num_hidden_layers=1,
                                                         num_attention_heads=2), projection_dim=16)
    clip.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def changed_components(base, out, weight_files: dict) -> set:
    """The components (by name -> weight file) whose stored tensors differ bit for bit between two
    pipeline folders; erasure.json's `changed` must count the same tensors."""
    import json

    changed = {}
    for name, file in weight_files.items():
        old, new = load_file(os.path.join(base, file)), load_file(os.path.join(out, file))
        changed[name] = sum(not torch.equal(old[k].view(torch.uint8), new[k].view(torch.uint8)) for k in old)
    with open(os.path.join(out, "erasure.json")) as f:
        recorded = json.load(f)["changed"]
    assert {n: recorded[n]["tensors"] for n in weight_files} == changed
    return {n for n, count in changed.items() if count}


def assert_resume_reproduces(base, tmp_path) -> None:
    """A SalUn erase of `base` stopped at step 3 and resumed from its step-2 checkpoint ends on the
    uninterrupted run's UNet weights, which differ from the base's."""
    from sd_erasure import SalUnConfig, erase

    settings = dict(model=str(base), concept="a cat", num_images=8, synthesis_steps=2, steps=4, batch_size=2,
                    checkpointing_steps=2, self_check_images=4)
    erase(SalUnConfig(output_dir=str(tmp_path / "whole"), **settings), show_progress=False)

    def stop_at_step_3(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        erase(SalUnConfig(output_dir=str(tmp_path / "resumed"), **settings), step_callback=stop_at_step_3,
              show_progress=False)
    erase(SalUnConfig(output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest", **settings),
          show_progress=False)
    whole, resumed = (unet_weights(tmp_path / run) for run in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not all(torch.equal(whole[k], v) for k, v in unet_weights(base).items())
