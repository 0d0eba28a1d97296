"""Scale: optimizer state only where the mask allows, and several processes giving one process's answer."""

import json
import os
import subprocess
import sys

import torch

from sd_erasure.erasure.masked_adam import MaskedAdam

from conftest import REPO, assert_sharded_salun_matches_one_process, torchrun



def _steps(optimizer, param, gradients, mask=None):
    for gradient in gradients:
        param.grad = gradient * mask if mask is not None else gradient.clone()
        optimizer.step()


def test_masked_adam_moves_exactly_what_dense_adam_on_masked_gradients_moves_with_a_fraction_of_the_state():
    torch.manual_seed(0)
    start = torch.randn(40, 30)
    mask = torch.rand(40, 30) < 0.3
    gradients = [torch.randn(40, 30) for _ in range(12)]
    dense, masked = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    dense_adam = torch.optim.Adam([dense], lr=1e-2, fused=True)
    masked_adam = MaskedAdam([(masked, mask)], lr=1e-2)
    _steps(dense_adam, dense, gradients, mask)
    _steps(masked_adam, masked, gradients)  # full gradients: the optimizer applies the mask
    assert torch.equal(masked, dense)  # same kernel, same arithmetic
    assert torch.equal(masked[~mask], start[~mask]) and (masked[mask] != start[mask]).all()
    dense_bytes = sum(t.numel() * t.element_size() for t in dense_adam.state[dense].values())
    # two moments and an int32 position per allowed entry (+ the step count) instead of two moments per entry
    assert masked_adam.state_bytes() == int(mask.sum()) * 12 + 4 and masked_adam.state_bytes() < 0.5 * dense_bytes


def test_masked_adam_with_a_soft_mask_moves_each_entry_by_its_share_of_the_adam_update():
    torch.manual_seed(1)
    start = torch.randn(64)
    weights = torch.rand(64) * (torch.rand(64) < 0.5)
    gradient = torch.randn(64)
    full, soft = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    _steps(torch.optim.Adam([full], lr=0.1, fused=True), full, [gradient])
    _steps(MaskedAdam([(soft, weights)], lr=0.1), soft, [gradient])
    torch.testing.assert_close(soft - start, weights * (full - start), rtol=1e-5, atol=1e-7)
    assert torch.equal(soft[weights == 0], start[weights == 0])


def test_two_processes_erase_like_one_with_the_same_global_batch(tiny_sd, tmp_path):
    # 2 CPU processes (torchrun, gloo) at batch 2 each vs 1 process at batch 4, one thread each.
    env = {**os.environ, "PYTHONPATH": REPO, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    common = ["-m", "sd_erasure.erasure.cli", "erase", "--model", str(tiny_sd), "--concept", "nudity", "--num-images", "16",
              "--synthesis-steps", "4", "--steps", "6"]
    one = subprocess.run([sys.executable, *common, "--batch-size", "4", "--output", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*torchrun(), *common,
                          "--batch-size", "2", "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-8000:]  # torchrun's summary is long: keep the rank's traceback
    assert json.loads((tmp_path / "two" / "erasure.json").read_text())["processes"] == 2  # really sharded

    assert_sharded_salun_matches_one_process(tiny_sd, tmp_path / "one", tmp_path / "two")
