"""Interrupted runs: resuming gives the uninterrupted result; a diverging loss stops cleanly."""

import os

import pytest
import torch

from conftest import erase_cli, unet_weights
from sd_erasure import SalUnConfig, erase

SETTINGS = dict(concept="nudity", num_images=16, synthesis_steps=4, steps=6, batch_size=4, checkpointing_steps=2)


def test_resumed_run_gives_the_same_weights_as_an_uninterrupted_one(tiny_sd, tmp_path):
    whole = tmp_path / "whole"
    erase(SalUnConfig(model=str(tiny_sd), output_dir=str(whole), **SETTINGS), show_progress=False)

    interrupted = tmp_path / "interrupted"

    def ctrl_c_at_step_3(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        erase(SalUnConfig(model=str(tiny_sd), output_dir=str(interrupted), **SETTINGS),
              step_callback=ctrl_c_at_step_3, show_progress=False)
    partial = str(interrupted) + ".incomplete"
    assert not interrupted.exists()
    assert {"checkpoint-2", "saliency_mask.safetensors"} <= set(os.listdir(partial))

    # Re-running without --resume refuses to clobber the interrupted run...
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", interrupted, "--num-images", 16,
                     "--synthesis-steps", 4, "--steps", 6, "--batch-size", 4, "--checkpointing-steps", 2) == 2
    # ...and resuming with other settings is refused too.
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", interrupted, "--num-images", 16,
                     "--synthesis-steps", 4, "--steps", 6, "--batch-size", 4, "--checkpointing-steps", 2,
                     "--learning-rate", 1e-4, "--resume-from-checkpoint", "latest") == 2
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", interrupted, "--num-images", 16,
                     "--synthesis-steps", 4, "--steps", 6, "--batch-size", 4, "--checkpointing-steps", 2,
                     "--resume-from-checkpoint", "latest") == 0
    a, b = unet_weights(whole), unet_weights(interrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = unet_weights(tiny_sd)
    assert any(not torch.equal(a[k], base[k]) for k in a)
    assert not os.path.exists(partial)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tiny_sd, tmp_path, capsys):
    out = tmp_path / "diverged"
    code = erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, "--num-images", 8,
                     "--synthesis-steps", 2, "--steps", 20, "--batch-size", 4, "--checkpointing-steps", 1,
                     "--learning-rate", 1e30)
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and "--learning-rate" in err and "checkpoint" in err
    assert not out.exists()
    assert any(n.startswith("checkpoint-") for n in os.listdir(str(out) + ".incomplete"))
