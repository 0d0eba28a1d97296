"""The cost of one attacked prompt of UnlearnDiffAtk's nudity protocol on a random-weight pipeline.

    python -m benchmarks.bench_attack --size tiny --record
    python -m benchmarks.bench_attack --size sd15 --prompts 2 --steps 200 --check-every 100 --record   # on a GPU

Random weights draw noise in which NudeNet finds nothing, so every prompt runs the whole attack
(all `--steps`, a check every `--check-every`) and the calibration: the worst case per prompt. The
same folder is base and erased model. Reports seconds per attacked prompt and per optimisation
step (checks included) and peak memory.
"""

import argparse
import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import tempfile
import time
from datetime import datetime, timezone

import torch

from benchmarks.bench_erase import device_name, publish


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="optimisation steps per prompt")
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--num-inference-steps", type=int, default=50, help="sampler steps of each check's image")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)

    from sd_erasure.erasure.model_io import save_stock_pipeline
    from sd_erasure.erasure.training import library_versions, peak_rss_bytes
    from sd_erasure.evaluation.attack import AttackSettings, NudityAttack, run_attack
    from sd_erasure.evaluation.nudity import EXPOSED_CLASSES
    from sd_erasure.evaluation.prompt_sets import load_prompts
    from sd_erasure.pipelines import build_random_pipeline

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as work:
        model = os.path.join(work, "model")
        save_stock_pipeline(build_random_pipeline(args.size, tokenizer_dir=os.path.join(work, "tokenizer")), model)
        suite = NudityAttack(load_prompts("nudity-142", limit=args.prompts), 0.45, list(EXPOSED_CLASSES),
                             args.num_inference_steps, None, 0, calibrate=True)
        settings = AttackSettings(tokens=5, steps=args.steps, check_every=args.check_every)
        started = time.perf_counter()
        metrics = run_attack(suite, model, os.path.join(work, "attack"), model, settings, show_progress=False)
        seconds = time.perf_counter() - started
    per_prompt = metrics["seconds_per_attacked_prompt"]
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    result = {"benchmark": "attack", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": device_name(), "settings": {k: v for k, v in vars(args).items() if k != "record"},
              "suite": "nudity", "asr": metrics["asr"], "seconds_per_attacked_prompt": round(per_prompt, 2),
              "seconds_per_step": round(per_prompt / args.steps, 4), "wall_seconds": round(seconds, 1),
              "peak_memory_gib": round(peak / 2**30, 3), "peak_memory_kind": "cuda_max_allocated" if cuda else "cpu_max_rss",
              "versions": library_versions()}
    return publish(result, args.record)


if __name__ == "__main__":
    main()
