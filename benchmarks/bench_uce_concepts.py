"""UCE's edit for many concepts at once (one closed-form solve), on a random-weight pipeline.

    python -m benchmarks.bench_uce_concepts --size sd15 --concepts 10 100 --record

Each count erases that many distinct concepts ("concept 0", "concept 1", ...) jointly, as
`sd-erase erase --method uce --concept ... --concept ...` does, and times the method's edit (text
encoding of the erase and guide texts, the solve, the 32 projection updates at SD-1.5 size). The
job's self-check is not run here: it costs the same per concept whatever the method (16 + 16
images of each), and is measured with the erase benchmarks.
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
    parser.add_argument("--record", action="store_true", help="append each result to benchmarks/results.jsonl")
    args = parser.parse_args(argv)

    from sd_erasure.erasure.folders import BaseModel
    from sd_erasure.erasure.job import _session, plan_erase
    from sd_erasure.erasure.training import library_versions
    from sd_erasure.erasure.uce import UceConfig, erase_pipeline
    from sd_erasure.pipelines import build_random_pipeline

    results = []
    with tempfile.TemporaryDirectory() as work:
        pipeline = build_random_pipeline(args.size, tokenizer_dir=os.path.join(work, "tokenizer"))
        for count in args.concepts:
            start = time.perf_counter()
            plan = plan_erase(UceConfig(model="random", concept=[f"concept {k}" for k in range(count)]),
                              BaseModel("random", work))
            planned = time.perf_counter()
            session = _session(plan, pipeline, show_progress=False)
            record, _ = erase_pipeline(pipeline, plan.config, session)
            edit = time.perf_counter() - planned
            results.append(publish({
                "benchmark": "uce-concepts",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": device_name(),
                "settings": {"size": args.size, "concepts": count},
                "seconds": {"plan": round(planned - start, 3), "edit": round(edit, 3)},
                "erase_texts": len(record["prompts"]["erase"]),
                "condition_number": record["edit"]["condition_number"],
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                "versions": library_versions(),
            }, args.record))
    return results


if __name__ == "__main__":
    main()
