"""SalUn end to end on a random-weight pipeline: seconds and peak memory per phase.

    python -m benchmarks.bench_salun --size tiny                  # CPU, seconds
    python -m benchmarks.bench_salun --size sd15 --mixed-precision bf16 --num-images 256 --synthesis-steps 20 --record

It runs the real code path (`erasure.erase`) with a fresh data cache, so synthesis is measured,
and prints one JSON object; `--record` also appends it to benchmarks/results.jsonl.
"""

import argparse
import json
import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # e.g. per-prompt truncation notices for long I2P prompts
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import platform
import tempfile
from datetime import datetime, timezone

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--num-images", type=int, default=32, help="forget and retain images each")
    parser.add_argument("--synthesis-steps", type=int, default=20)
    parser.add_argument("--synthesis-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--record", action="store_true", help=f"append the result to {os.path.relpath(RESULTS)}")
    args = parser.parse_args(argv)

    from erasure import SalUnConfig, erase
    from erasure.model_io import save_stock_pipeline
    from pipelines import build_random_pipeline

    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "base")
        save_stock_pipeline(build_random_pipeline(args.size, tokenizer_dir=os.path.join(base, "tokenizer")), base)
        config = SalUnConfig(
            model=base, concept="nudity", output_dir=os.path.join(work, "erased"), cache_dir=os.path.join(work, "cache"),
            num_images=args.num_images, synthesis_steps=args.synthesis_steps,
            synthesis_batch_size=args.synthesis_batch_size, steps=args.steps, batch_size=args.batch_size,
            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing)
        record = erase(config, show_progress=False).record
    seconds = record["seconds"]
    result = {
        "benchmark": "salun",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "settings": vars(args) | {"record": None},
        "seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 3),
        "synthesis_images_per_s": round(2 * args.num_images / seconds["data"], 2),
        "unlearning_steps_per_s": round(args.steps / seconds["unlearning"], 2),
        "peak_memory_gib": {k: round(v / 2**30, 3) for k, v in record["peak_memory"]["bytes"].items()},
        "peak_memory_kind": record["peak_memory"]["kind"],
        "versions": record["versions"],
    }
    del result["settings"]["record"]
    print(json.dumps(result, indent=1))
    if args.record:
        with open(RESULTS, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
