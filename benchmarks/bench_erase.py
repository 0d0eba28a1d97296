"""An erasure method end to end on a random-weight pipeline: seconds and peak memory per phase.

    python -m benchmarks.bench_erase --size tiny                  # SalUn on a CPU, seconds
    python -m benchmarks.bench_erase --size tiny --method esd --steps 50
    python -m benchmarks.bench_erase --size sd15 --mixed-precision bf16 --gradient-checkpointing \
        --num-images 256 --synthesis-scheduler dpm --synthesis-steps 20 --synthesis-batch-size 32 --record
    python -m benchmarks.bench_erase --size sd15 --method esd --mixed-precision bf16 --steps 50 --record
    python -m benchmarks.bench_erase --size sd15 --method uce --record
    python -m benchmarks.bench_erase --size sd15 --method advunlearn --mixed-precision bf16 --steps 10 --warmup-steps 2
    python -m benchmarks.bench_erase --size tiny --method scissorhands     # also: ca, fmn, salun-soft

It runs the real code path (`erasure.erase`) with a fresh data cache, so synthesis is measured,
and prints one JSON object; `--record` also appends it to benchmarks/results.jsonl.
SalUn erases "nudity" with its default prompts; ESD erases "nudity" (ESD-u, trajectories of
the model being trained unless --sample-from base); UCE erases "nudity" guided to ''.
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

from sd_erasure import methods
from sd_erasure.erasure.cli import SAMPLER_NAMES
from sd_erasure.erasure.methods import DEFAULT_METHOD

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "tiny-sd2", "tiny-sdxl", "sd15", "sd2", "sdxl"), default="tiny",
                        help="the random pipeline's shapes (sd2: SD 2.1-768's, v-prediction; sdxl: SDXL-base's)")
    parser.add_argument("--method", choices=tuple(methods()), default=DEFAULT_METHOD)
    parser.add_argument("--sample-from", choices=("current", "base"), default="current",
                        help="for methods that sample trajectories (esd)")
    parser.add_argument("--num-images", type=int, default=32, help="forget and retain images each")
    parser.add_argument("--synthesis-steps", type=int, default=20)
    parser.add_argument("--synthesis-scheduler", choices=SAMPLER_NAMES,
                        help="sampler for the forget/retain sets (default: the pipeline's, DDIM)")
    parser.add_argument("--synthesis-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, help="default: 100 (salun), 1000 (esd)")
    parser.add_argument("--batch-size", type=int, help="default: 8 (salun), 1 (esd)")
    parser.add_argument("--warmup-steps", type=int, help="advunlearn: steps before the attack starts (default 200)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--output-format", choices=("pipeline", "lora", "both"), help="default: pipeline (lora with "
                                                                                    "--adapter lora)")
    parser.add_argument("--adapter", choices=("full", "lora"), default="full", help="train the weights or a LoRA")
    parser.add_argument("--lora-rank", type=int, help="with --adapter lora: its rank (default 4)")
    parser.add_argument("--scope", choices=("full", "xattn", "noxattn"), help="salun-like methods: the weights trained")
    parser.add_argument("--mask-ranking", choices=("unet", "scope"), help="salun: rank saliency over the UNet or the scope")
    parser.add_argument("--resolution", type=int, help="image size of the data (default: the model's)")
    parser.add_argument("--record", action="store_true", help=f"append the result to {os.path.relpath(RESULTS)}")
    args = parser.parse_args(argv)

    from dataclasses import fields

    from sd_erasure import erase, get_method
    from sd_erasure.erasure.model_io import save_stock_pipeline
    from sd_erasure.pipelines import build_random_pipeline

    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "base")
        pipeline = build_random_pipeline(args.size, tokenizer_dir=os.path.join(base, "tokenizer"))
        attention = sorted({type(p).__name__ for p in pipeline.unet.attn_processors.values()})  # SDPA: AttnProcessor2_0
        save_stock_pipeline(pipeline, base)
        del pipeline
        common = dict(model=base, concept="nudity", output_dir=os.path.join(work, "erased"),
                      cache_dir=os.path.join(work, "cache"), mixed_precision=args.mixed_precision)
        settings = {k: getattr(args, k) for k in ("steps", "batch_size", "warmup_steps", "lora_rank", "scope",
                                                  "mask_ranking", "resolution")
                    if getattr(args, k) is not None}
        settings.update(gradient_checkpointing=args.gradient_checkpointing, num_images=args.num_images,
                        synthesis_steps=args.synthesis_steps, synthesis_batch_size=args.synthesis_batch_size,
                        synthesis_scheduler=args.synthesis_scheduler, sample_from=args.sample_from,
                        output_format=args.output_format, adapter=args.adapter)
        config_class = get_method(args.method).config
        accepted = {f.name for f in fields(config_class)}  # each method takes the settings it has
        config = config_class(**common, **{k: v for k, v in settings.items() if k in accepted})
        record = erase(config, show_progress=False).record
    seconds = record["seconds"]
    steps = record.get("steps")
    trained = next((phase for phase in ("unlearning", "training", "repair") if phase in seconds), None)
    result = {
        "benchmark": args.method,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "settings": vars(args) | {"record": None},
        "seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 3),
        "settings_used": {k: v for k, v in record["hyperparameters"].items() if not isinstance(v, list)},
        **({"synthesis_images_per_s": round(sum(record["data"].values()) / seconds["data"], 2)}
           if "data" in record else {}),
        **({"steps_per_s": round(steps / seconds[trained], 2), "seconds_per_step": round(seconds[trained] / steps, 4)}
           if trained else {}),
        "peak_memory_gib": {k: round(v / 2**30, 3) for k, v in record["peak_memory"]["bytes"].items()},
        "peak_memory_kind": record["peak_memory"]["kind"],
        **({"optimizer_state_bytes": record["optimizer_state"]} if "optimizer_state" in record else {}),
        **({"adapter": record["adapter"]} if "adapter" in record else {}),
        **({"lora": {k: record["lora"][k]
                     for k in ("adapter_bytes", "dense_bytes", "max_relative_error", "max_weight_error")}}
           if "lora" in record else {}),
        "attention": attention,
        "versions": record["versions"],
    }
    del result["settings"]["record"]
    return publish(result, args.record)


def publish(result: dict, record: bool) -> dict:
    """Print a benchmark result; with `record`, append it to benchmarks/results.jsonl."""
    print(json.dumps(result, indent=1))
    if record:
        append_rows([result])
    return result


def append_rows(rows: list[dict]) -> None:
    with open(RESULTS, "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
