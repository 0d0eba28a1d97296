"""UCE's edit for many concepts at once (one closed-form solve), on a random-weight pipeline.

    python -m benchmarks.bench_uce_concepts --size sd15 --concepts 10 100 --record
    python -m benchmarks.bench_uce_concepts --size sd15 --concepts 1 10 100 --lora --record

Each count erases that many distinct concepts ("concept 0", "concept 1", ...) jointly, as
`sd-erase erase --method uce --concept ... --concept ...` does, and times the method's edit (text
encoding of the erase and guide texts, the solve, the 32 projection updates at SD-1.5 size). The
job's self-check is not run here: it costs the same per concept whatever the method (16 + 16
images of each), and is measured with the erase benchmarks. With `--lora` each edit is also written
as the LoRA `--output-format lora` writes (erasure/lora_export.py: finding the changed tensors against
the base's files, factoring and writing them), timed, with the adapter's bytes and errors; the
edited weights are put back before the next count, so each count's edit starts from the base.
"""

import argparse
import os
import resource
import tempfile
import time
from datetime import datetime, timezone

from benchmarks.bench_erase import device_name, publish


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--concepts", type=int, nargs="+", default=[10, 100], help="concept counts to time")
    parser.add_argument("--lora", action="store_true", help="also write each edit as a LoRA: seconds, bytes, errors")
    parser.add_argument("--record", action="store_true", help="append each result to benchmarks/results.jsonl")
    args = parser.parse_args(argv)

    from sd_erasure.erasure.folders import BaseModel
    from sd_erasure.erasure.job import _session, plan_erase
    from sd_erasure.erasure.model_io import save_stock_pipeline
    from sd_erasure.erasure.training import library_versions
    from sd_erasure.erasure.uce import UceConfig, edited, erase_pipeline
    from sd_erasure.pipelines import build_random_pipeline

    results = []
    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "base")
        pipeline = build_random_pipeline(args.size, tokenizer_dir=os.path.join(base, "tokenizer"))
        if args.lora:
            save_stock_pipeline(pipeline, base)
            unedited = {k: v.clone() for k, v in pipeline.unet.state_dict().items() if edited(k)}
        for count in args.concepts:
            start = time.perf_counter()
            plan = plan_erase(UceConfig(model="random", concept=[f"concept {k}" for k in range(count)]),
                              BaseModel("random", work))
            planned = time.perf_counter()
            session = _session(plan, pipeline, show_progress=False)
            record, _ = erase_pipeline(pipeline, plan.config, session)
            edit = time.perf_counter() - planned
            lora = {}
            if args.lora:
                lora = adapter_row(pipeline, base, os.path.join(work, f"lora-{count}"))
                pipeline.unet.load_state_dict(unedited, strict=False)
            results.append(publish({
                "benchmark": "uce-concepts",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": device_name(),
                "settings": {"size": args.size, "concepts": count, "lora": args.lora},
                "seconds": {"plan": round(planned - start, 3), "edit": round(edit, 3), **lora.pop("seconds", {})},
                **lora,
                "erase_texts": len(record["prompts"]["erase"]),
                "condition_number": record["edit"]["condition_number"],
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                "versions": library_versions(),
            }, args.record))
    return results


def adapter_row(pipeline, base: str, folder: str) -> dict:
    """Write the pipeline's edit as the LoRA the job writes: seconds to find the changed tensors and to
    write the adapter, its bytes and errors."""
    from sd_erasure.erasure.lora_export import save_lora
    from sd_erasure.erasure.model_io import changed_weights

    start = time.perf_counter()
    _, names = changed_weights(pipeline, base)
    found = time.perf_counter()
    os.makedirs(folder)
    record = save_lora(pipeline, base, folder, names)
    written = time.perf_counter()
    return {"seconds": {"find_changed": round(found - start, 3), "save_lora": round(written - found, 3)},
            "lora": {"file_bytes": os.path.getsize(os.path.join(folder, record["file"])),
                     "ranks": sorted({layer["rank"] for layer in record["layers"].values()}),
                     **{k: record[k] for k in ("adapter_bytes", "dense_bytes", "max_relative_error", "max_weight_error")}}}


if __name__ == "__main__":
    main()
