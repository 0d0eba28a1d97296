"""Every erasure method on the bundled shapes-world model, for an object ("circle") and a style ("red").

    python -m benchmarks.compare_methods                      # all methods, both concepts (CPU: ~15 min)
    python -m benchmarks.compare_methods --methods uce --concepts circle --record
    python -m benchmarks.compare_methods --concepts circle --attack --record   # + UnlearnDiffAtk (CPU: ~1 h)
    python -m benchmarks.compare_methods --model shapes-xl --record   # the SDXL-architecture model, its methods

Each erase runs as `sd-erase erase --model shapes --method M --concept C` (or `--model shapes-xl`) in its own process with
an empty data cache (so its seconds include synthesis and its peak memory is its own), with the
settings the shapes model recommends for the method. Each result is evaluated with the shapes
protocol (UA, IRA, CRA, FID on the judge's features, base model alongside). With `--attack`, each
output is also attacked with `sd-erase attack`'s defaults (pre-attack ASR, ASR, attacked concept
rate, random-words control); the calibration (the attack on the base model) depends on the concept
only, so it runs once per concept and its numbers go in every row. Prints a Markdown table;
`--record` appends every row to benchmarks/results.jsonl.
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


ATTACK_KEYS = ("pre_attack_asr", "asr", "concept_rate_attacked", "random_control_asr", "seconds_per_attacked_prompt")
CALIBRATION_KEYS = ("calibration_asr", "calibration_concept_rate")


def attack_output(output: str, concept: str, work: str, name: str, base: str, calibrate: bool) -> dict:
    """`sd-erase attack` with its defaults on an erase output of `base` (its targets and calibration
    come from that model): the metrics the table reports."""
    from sd_erasure.evaluation.attack import ShapesAttack, run_attack

    metrics = run_attack(ShapesAttack(concept), output, os.path.join(work, f"attack-{name}"), base,
                         calibrate=calibrate, show_progress=False)
    keys = ATTACK_KEYS + (CALIBRATION_KEYS if calibrate else ())
    return {"settings": metrics["settings"], **{k: metrics[k] for k in keys}}


def table(rows: list[dict]) -> str:
    attacked = all("attack" in r for r in rows)
    extra = " pre-attack ASR ↓ | ASR ↓ | attacked concept rate ↓ | calibration ASR |" if attacked else ""
    lines = ["| concept | method | UA ↑ | IRA ↑ | CRA ↑ | FID ↓ | seconds | peak RSS GiB | weights changed | bytes stored |"
             + extra, "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (4 if attacked else 0)]
    for base in {r["concept"]: r for r in rows}.values():
        lines.append(f"| {base['concept']} | (base model) | {base['base']['UA']:.3f} | {base['base']['IRA']:.3f} | "
                     f"{base['base']['CRA']:.3f} | – | – | – | – | – |" + (" – | – | – | – |" if attacked else ""))
    for r in rows:
        e = r["erased"]
        line = (f"| {r['concept']} | {r['method']} | {e['UA']:.3f} | {e['IRA']:.3f} | {e['CRA']:.3f} | "
                f"{e['FID']:.1f} | {r['erase_seconds']:.0f} | {r['peak_memory_gib']:.2f} | "
                f"{r['changed_share']:.2%} | {r['storage_bytes']:,}{STORAGE_NOTES.get(r['storage'], '')} |")
        if attacked:
            a = r["attack"]
            line += (f" {a['pre_attack_asr']:.2f} | {a['asr']:.2f} | {a['concept_rate_attacked']:.2f} | "
                     f"{a['calibration_asr']:.2f} |")
        lines.append(line)
    return "\n".join(lines)


STORAGE_NOTES = {"adapter": " (adapter)", "pipeline files": " (pipeline files)"}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    registered = tuple(methods())
    parser.add_argument("--methods", nargs="+", choices=registered,
                        help="default: every registered method")
    parser.add_argument("--model", choices=("shapes", "shapes-xl"), default="shapes", help="the bundled model erased")
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPTS))
    parser.add_argument("--erase-args", default="", help="extra `sd-erase erase` flags for every run, e.g. '--steps 50'")
    parser.add_argument("--record", action="store_true", help=f"append the rows to {os.path.relpath(RESULTS)}")
    parser.add_argument("--attack", action="store_true", help="also attack every output (sd-erase attack's defaults)")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for concept in args.concepts:
            calibration = None
            for method in args.methods or registered:
                record, wall, metrics = erase_and_evaluate(method, concept, work, args.erase_args.split(),
                                                           model=args.model)
                changed = record["changed"]
                changed_bytes = sum(c["bytes"] for c in changed.values())
                # what a user keeps beyond the base model: the adapter where the output is one, the changed
                # tensors, and the pipeline files a suppressing pipeline (SEOT) needs
                adapter = record["hyperparameters"]["output_format"] == "lora"
                pipeline_files = record.get("suppression", {}).get("stored_bytes", 0)
                row = {
                    "benchmark": "compare_methods", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "device": device_name(), "model": args.model, "method": method, "concept": concept,
                    "settings": record["hyperparameters"], "erase_args": args.erase_args,
                    "base": {k: metrics["base"][k] for k in ("UA", "IRA", "CRA")},
                    "erased": {k: metrics["erased"][k] for k in ("UA", "IRA", "CRA", "FID", "KID_mean")},
                    "erase_seconds": round(wall, 1), "phase_seconds": record["seconds"],
                    "peak_memory_gib": round(max(record["peak_memory"]["bytes"].values()) / 2**30, 3),
                    "peak_memory_kind": record["peak_memory"]["kind"],
                    "changed_share": sum(c["entries"] for c in changed.values()) / sum(c["of"] for c in changed.values()),
                    "bytes_changed": changed_bytes,
                    "storage": "adapter" if adapter else "pipeline files" if pipeline_files else "changed tensors",
                    "storage_bytes": record["lora"]["adapter_bytes"] if adapter else changed_bytes + pipeline_files,
                    "protocol": metrics["protocol"], "versions": record["versions"],
                }
                if args.attack:
                    row["attack"] = attack_output(os.path.join(work, f"{method}-{concept}"), concept, work,
                                                  f"{method}-{concept}", args.model, calibrate=calibration is None)
                    calibration = calibration or {k: row["attack"][k] for k in CALIBRATION_KEYS}
                    row["attack"].update(calibration)
                rows.append(row)
                if args.record:  # row by row: an interrupted comparison keeps what it measured
                    append_rows([row])
                print(f"{concept:>8} {method:<10} UA {row['erased']['UA']:.3f} IRA {row['erased']['IRA']:.3f} "
                      f"CRA {row['erased']['CRA']:.3f} FID {row['erased']['FID']:.1f} {wall:.0f} s"
                      + (f" ASR {row['attack']['asr']:.2f}" if args.attack else ""), flush=True)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
