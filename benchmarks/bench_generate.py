"""Evaluation generation throughput: the harness (evaluation.generate) vs a bare diffusers loop.

    python -m benchmarks.bench_generate --size tiny --record
    python -m benchmarks.bench_generate --size sd15 --prompts 64 --steps 50 --record      # on a GPU

Both run the same pipeline, prompts (nudity-142), seeds, steps, guidance and batch size, and both
write PNGs; the harness adds per-image generators, resumability and the manifest. Target: the
harness at >= 95% of the bare loop's images/s.
"""

import argparse
import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # e.g. per-prompt truncation notices for long I2P prompts
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import tempfile
import time
from datetime import datetime, timezone

import torch

from benchmarks.bench_erase import device_name, publish


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the best of each is kept")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)

    from sd_erasure.erasure.training import library_versions, peak_rss_bytes
    from sd_erasure.evaluation.generate import GenerationSettings, generate_images
    from sd_erasure.evaluation.prompt_sets import load_prompts
    from sd_erasure.pipelines import build_random_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as work:
        pipeline = build_random_pipeline(args.size, tokenizer_dir=os.path.join(work, "tokenizer"))
        pipeline = pipeline.to(device, torch.float16 if device == "cuda" else torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        rows = load_prompts("nudity-142", limit=args.prompts)
        settings = GenerationSettings(num_inference_steps=args.steps, batch_size=args.batch_size)

        def bare(folder):
            os.makedirs(folder)
            for start in range(0, len(rows), args.batch_size):
                batch = rows[start:start + args.batch_size]
                images = pipeline([r.prompt for r in batch], num_inference_steps=args.steps, guidance_scale=7.5,
                                  generator=torch.Generator().manual_seed(batch[0].seed)).images
                for k, image in enumerate(images):
                    image.save(os.path.join(folder, f"{start + k}.png"))

        def harness(folder):
            generate_images(pipeline, rows, folder, settings, {"benchmark": True}, show_progress=False)

        best = {"bare": float("inf"), "harness": float("inf")}
        for repeat in range(args.repeats):
            for name, run in (("bare", bare), ("harness", harness)):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run(os.path.join(work, f"{name}-{repeat}"))
                if device == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - start)
    rates = {name: round(len(rows) / seconds, 2) for name, seconds in best.items()}
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()
    result = {"benchmark": "generate", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": device_name(), "settings": {k: v for k, v in vars(args).items() if k != "record"},
              "images_per_s": rates, "harness_vs_bare": round(rates["harness"] / rates["bare"], 3),
              "peak_memory_gib": round(peak / 2**30, 3),
              "peak_memory_kind": "cuda_max_allocated" if device == "cuda" else "cpu_max_rss",
              "versions": library_versions()}
    return publish(result, args.record)


if __name__ == "__main__":
    main()
