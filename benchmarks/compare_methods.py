"""Every erasure method on the bundled shapes-world model, for an object ("circle") and a style ("red").

    python -m benchmarks.compare_methods                      # all methods, both concepts (CPU: ~15 min)
    python -m benchmarks.compare_methods --methods uce --concepts circle --record

Each erase runs as `sd-erase erase --model shapes --method M --concept C` in its own process with
an empty data cache (so its seconds include synthesis and its peak memory is its own), with the
settings the shapes model recommends for the method. Each result is evaluated with the shapes
protocol (UA, IRA, CRA, FID on the judge's features, base model alongside). Prints a Markdown
table; `--record` appends every row to benchmarks/results.jsonl.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

from benchmarks.bench_erase import RESULTS, append_rows, device_name
from sd_erasure import methods
from sd_erasure.erasure.self_check import EXIT_NOT_ERASED

CONCEPTS = ("circle", "red")


def erase_in_subprocess(method: str, concept: str, work: str, extra: list[str], name: str | None = None,
                        cache: str | None = None, model: str = "shapes") -> tuple[dict, float]:
    """`sd-erase erase` in its own process into work/NAME (default METHOD-CONCEPT); erasure.json and seconds.
    A run the self-check finds not erased is a result too (exit code EXIT_NOT_ERASED)."""
    name = name or f"{method}-{concept}"
    output = os.path.join(work, name)
    env = {**os.environ, "SD_ERASURE_CACHE": cache or os.path.join(work, f"cache-{name}")}
    command = [sys.executable, "-m", "sd_erasure.erasure.cli", "erase", "--model", model, "--method", method,
               "--concept", concept, "--output", output, *extra]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, EXIT_NOT_ERASED):
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    wall = time.perf_counter() - started
    with open(os.path.join(output, "erasure.json")) as f:
        return json.load(f), wall


def erase_and_evaluate(method: str, concept: str, work: str, extra: list[str], name: str | None = None,
                       cache: str | None = None, images_per_prompt: int = 8, model: str = "shapes") -> tuple[dict, float, dict]:
    """erase_in_subprocess, then the shapes protocol on its output (base model alongside): record, seconds, metrics."""
    from sd_erasure.evaluation.metrics import Protocol
    from sd_erasure.evaluation.suite import evaluate_shapes

    name = name or f"{method}-{concept}"
    record, wall = erase_in_subprocess(method, concept, work, extra, name, cache, model)
    metrics = evaluate_shapes(os.path.join(work, name), concept, os.path.join(work, f"report-{name}"), base=model,
                              protocol=Protocol(images_per_prompt=images_per_prompt), show_progress=False)
    return record, wall, metrics


def table(rows: list[dict]) -> str:
    lines = ["| concept | method | UA ↑ | IRA ↑ | CRA ↑ | FID ↓ | seconds | peak RSS GiB | weights changed | bytes changed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for base in {r["concept"]: r for r in rows}.values():
        lines.append(f"| {base['concept']} | (base model) | {base['base']['UA']:.3f} | {base['base']['IRA']:.3f} | "
                     f"{base['base']['CRA']:.3f} | – | – | – | – | – |")
    for r in rows:
        e = r["erased"]
        lines.append(f"| {r['concept']} | {r['method']} | {e['UA']:.3f} | {e['IRA']:.3f} | {e['CRA']:.3f} | "
                     f"{e['FID']:.1f} | {r['erase_seconds']:.0f} | {r['peak_memory_gib']:.2f} | "
                     f"{r['changed_share']:.2%} | {r['bytes_changed']:,} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    registered = tuple(methods())
    parser.add_argument("--methods", nargs="+", choices=registered, default=list(registered))
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPTS))
    parser.add_argument("--erase-args", default="", help="extra `sd-erase erase` flags for every run, e.g. '--steps 50'")
    parser.add_argument("--record", action="store_true", help=f"append the rows to {os.path.relpath(RESULTS)}")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for concept in args.concepts:
            for method in args.methods:
                record, wall, metrics = erase_and_evaluate(method, concept, work, args.erase_args.split())
                changed = record["changed"]
                row = {
                    "benchmark": "compare_methods", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "device": device_name(), "method": method, "concept": concept,
                    "settings": record["hyperparameters"], "erase_args": args.erase_args,
                    "base": {k: metrics["base"][k] for k in ("UA", "IRA", "CRA")},
                    "erased": {k: metrics["erased"][k] for k in ("UA", "IRA", "CRA", "FID", "KID_mean")},
                    "erase_seconds": round(wall, 1), "phase_seconds": record["seconds"],
                    "peak_memory_gib": round(max(record["peak_memory"]["bytes"].values()) / 2**30, 3),
                    "peak_memory_kind": record["peak_memory"]["kind"],
                    "changed_share": sum(c["entries"] for c in changed.values()) / sum(c["of"] for c in changed.values()),
                    "bytes_changed": sum(c["bytes"] for c in changed.values()),
                    "protocol": metrics["protocol"], "versions": record["versions"],
                }
                rows.append(row)
                print(f"{concept:>8} {method:<10} UA {row['erased']['UA']:.3f} IRA {row['erased']['IRA']:.3f} "
                      f"CRA {row['erased']['CRA']:.3f} FID {row['erased']['FID']:.1f} {wall:.0f} s", flush=True)
    print(table(rows))
    if args.record:
        append_rows(rows)
    return rows


if __name__ == "__main__":
    main()
