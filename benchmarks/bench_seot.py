"""SEOT's cost at inference: images/s of the stock pipeline, SEOT with SWR only, and SEOT with ITO.

    python -m benchmarks.bench_seot --size tiny --record
    python -m benchmarks.bench_seot --size sd15 --record        # on a GPU (fp16)
    python -m benchmarks.bench_seot --size sdxl --record        # on a GPU (fp16; benchmarks/sdxl.sh)

Every prompt names the suppressed word, so each image pays for the suppression (prompts that do
not name it run as the stock pipeline does). ITO samples the unsuppressed image beside the
suppressed one and takes 10 UNet forward and backward passes per step in its window (20–40% of the
steps), so it costs far more than SWR, which is one SVD per prompt.
"""

import argparse
import time
from datetime import datetime, timezone

import torch

from benchmarks.bench_erase import device_name, publish


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "tiny-sdxl", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)

    import tempfile

    from sd_erasure.erasure.training import library_versions
    from sd_erasure.erasure.model_io import is_sdxl, suppressing_classes
    from sd_erasure.pipelines import build_random_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as work:
        stock = build_random_pipeline(args.size, tokenizer_dir=f"{work}/tokenizer")
    stock = stock.to(device, torch.float16 if device == "cuda" else torch.float32)
    stock.set_progress_bar_config(disable=True)
    suppressing = suppressing_classes()["sdxl" if is_sdxl(stock) else "sd"]
    prompts = [f"a photo of a cat number {k}" for k in range(args.images)]
    stock(prompts[:1], num_inference_steps=2, output_type="latent")  # warm-up: kernels, allocator
    seconds, peaks = {}, {}
    for name, iterations in (("stock", None), ("swr", 0), ("swr+ito", 10)):
        pipeline = stock if iterations is None else suppressing(
            **stock.components, suppressed_words=["cat"], optimization_iterations=iterations)
        pipeline.set_progress_bar_config(disable=True)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pipeline(prompts, num_inference_steps=args.steps, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
            peaks[name] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        seconds[name] = time.perf_counter() - start
    result = {"benchmark": "seot", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": device_name(), "settings": {k: v for k, v in vars(args).items() if k != "record"},
              "images_per_s": {name: round(args.images / s, 3) for name, s in seconds.items()},
              "cost_vs_stock": {name: round(s / seconds["stock"], 2) for name, s in seconds.items()},
              "peak_memory_gib": peaks or None, "versions": library_versions()}
    return publish(result, args.record)


if __name__ == "__main__":
    main()
