"""SalUn's optimizer step at SD-1.5 size: dense Adam on masked gradients vs MaskedAdam (state for salient entries only).

    python -m benchmarks.bench_optimizer --record                # SD-1.5 UNet shapes; CPU: ~15 GB RAM, minutes
    python -m benchmarks.bench_optimizer --size tiny

Parameters take the shapes of the UNet of `--size` (sd15: 859.5M entries, 686 tensors) with
random values and gradients and a random mask of density --mask-ratio. "dense" is what SalUn
did before MaskedAdam: fused torch.optim.Adam over whole tensors with the gradients multiplied
by the mask. Each variant runs in its own process, so its peak memory is its own (CUDA: peak
allocated; CPU: peak RSS). Prints one JSON object; --record appends it to benchmarks/results.jsonl.
"""

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch

from benchmarks.bench_erase import device_name, publish

VARIANTS = ("dense", "masked")


def measure(variant: str, size: str, mask_ratio: float, steps: int) -> dict:
    """Seconds per optimizer step, state bytes and peak memory of one variant, in this process."""
    from diffusers import UNet2DConditionModel

    from sd_erasure.erasure.masked_adam import MaskedAdam
    from sd_erasure.erasure.training import peak_rss_bytes
    from sd_erasure.pipelines.random_sd import SIZES

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.device("meta"):  # shapes only: no memory for a model we do not run
        shapes = [p.shape for p in UNet2DConditionModel(**SIZES[size]["unet"]).parameters()]
    generator = torch.Generator(device).manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, device=device)) for s in shapes]
    gradients = [torch.randn(s, generator=generator, device=device) for s in shapes]
    masks = [torch.rand(s, generator=generator, device=device) < mask_ratio for s in shapes]
    if variant == "dense":
        optimizer = torch.optim.Adam(params, lr=1e-5, fused=True)
    else:
        optimizer = MaskedAdam(list(zip(params, masks)), lr=1e-5)

    def step():
        for param, gradient, mask in zip(params, gradients, masks):
            param.grad = gradient * mask if variant == "dense" else gradient
        optimizer.step()

    step()  # state allocation and kernel warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    state_bytes = (optimizer.state_bytes() if variant == "masked"  # moments and int32 positions
                   else sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()))
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    return {"seconds_per_step": round(seconds, 4), "state_gib": round(state_bytes / 2**30, 3),
            "peak_memory_gib": round(peak / 2**30, 3), "parameters": sum(s.numel() for s in shapes),
            "tensors": len(shapes)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child process's share
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args.variant, args.size, args.mask_ratio, args.steps)))
        return {}
    from sd_erasure.erasure.training import library_versions

    results = {}
    for variant in VARIANTS:
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_optimizer", "--variant", variant,
                                "--size", args.size, "--mask-ratio", str(args.mask_ratio), "--steps", str(args.steps)],
                               check=True, capture_output=True, text=True)
        results[variant] = json.loads(child.stdout.strip().splitlines()[-1])
    result = {"benchmark": "optimizer", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": device_name(), "settings": {k: v for k, v in vars(args).items() if k not in ("record", "variant")},
              **results, "versions": library_versions()}
    return publish(result, args.record)


if __name__ == "__main__":
    main()
