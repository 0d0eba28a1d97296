"""The concept matrix of the shapes world: erase each concept, then test every concept.

    python -m benchmarks.concept_matrix --methods uce salun --work concept-matrix --record
    python -m benchmarks.concept_matrix --methods uce --groups circle+square circle+square:sequential

For each method, each of the world's 10 concepts (5 objects, 5 colours) is erased from the bundled
model with its profile's settings, one cell per concept, and every prompt of the world is judged
(UnlearnCanvas' heat map, "erase X, test every concept"): row X, column Y is the judge's accuracy on
Y in images of prompts naming Y, and (off the diagonal) not naming X. The diagonal is 1 − UA,
the rest retain. `--groups` adds multi-concept cells ("circle+square", all erased together;
":sequential" erases them one after another). Each cell runs in its own process, erase and
evaluation, and writes WORK/METHOD/CELL.json, so a run resumes where it stopped; `--jobs` runs cells
side by side. The base model's images are generated once. Writes WORK/METHOD-matrix.png and
WORK/summary.json (keeping the rows of methods and groups this run did not redo); prints one row per
method (mean UA, IRA, CRA, judge-FID, seconds, memory, storage) and per group.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from sd_erasure.evaluation.shapes import OBJECTS, STYLES, canonical_style

WORLD = OBJECTS + STYLES
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")


def cell_concepts(cell: str) -> tuple[list[str], bool]:
    """('circle+square:sequential') -> (['circle', 'square'], True)."""
    names, _, mode = cell.partition(":")
    return names.split("+"), mode == "sequential"


def protocol_of(args):
    from sd_erasure.evaluation.metrics import Protocol

    return Protocol(images_per_prompt=args.images_per_prompt)


def base_images(args):
    """The base model's images for every world prompt, generated once per protocol (WORK/base-N.pt)."""
    import torch

    path = os.path.join(args.work, f"base-{args.images_per_prompt}.pt")
    if not os.path.isfile(path):
        from sd_erasure.erasure.folders import resolve_model
        from sd_erasure.erasure.model_io import load_pipeline
        from sd_erasure.evaluation.metrics import generate
        from sd_erasure.evaluation.shapes import prompts

        images = generate(load_pipeline(resolve_model("shapes")), prompts(), protocol_of(args), show_progress=False)
        torch.save(images, path + ".tmp")
        os.replace(path + ".tmp", path)
    return torch.load(path)


def accuracy_row(prompt_list, per_prompt: int, objects, styles, erased: list[str]) -> dict[str, float]:
    """Judge accuracy per world concept: on images of prompts naming it (and, for a concept not
    erased, naming none of the erased ones)."""
    expected = [p for p in prompt_list for _ in range(per_prompt)]
    erased_set = {c if c in OBJECTS else canonical_style(c) for c in erased}
    row = {}
    for concept in WORLD:
        is_object = concept in OBJECTS
        hits = [(objects if is_object else styles)[i] == concept for i, p in enumerate(expected)
                if (p.object if is_object else p.style) == concept
                and (concept in erased_set or not {p.object, p.style} & erased_set)]
        row[concept] = sum(hits) / len(hits)
    return row


def run_cell(args, method: str, cell: str) -> dict:
    """Erase and evaluate one cell (in this process); the result is written to WORK/METHOD/CELL.json."""
    import torch

    from sd_erasure.erasure.cli import main as sd_erase
    from sd_erasure.erasure.folders import resolve_model
    from sd_erasure.erasure.model_io import load_pipeline
    from sd_erasure.evaluation.judge import JudgeFeatures, load_judge
    from sd_erasure.evaluation.metrics import generate, score
    from sd_erasure.evaluation.shapes import JUDGE_FILE, prompts
    from sd_erasure.evaluation.utility import fid_kid

    torch.set_num_threads(args.threads)
    concepts, sequential = cell_concepts(cell)
    out = os.path.join(args.work, method, cell.replace(":", "-"))
    command = ["erase", "--model", "shapes", "--method", method, "--output", out, "--overwrite",
               *[a for c in concepts for a in ("--concept", c)], *(["--sequential"] if sequential else [])]
    code = sd_erase(command)
    if code not in (0, 3):
        raise SystemExit(f"{method} {cell}: sd-erase exited with {code}")
    with open(os.path.join(out, "erasure.json")) as f:
        record = json.load(f)
    judge, prompt_list, protocol = load_judge(JUDGE_FILE), prompts(), protocol_of(args)
    images = {"base": base_images(args),
              "erased": generate(load_pipeline(resolve_model(out)), prompt_list, protocol, show_progress=False)}
    metrics, rows = {}, {}
    one_kind = len({c in OBJECTS for c in concepts}) == 1  # UA/IRA/CRA keep their meaning (metrics.py)
    for name, batch in images.items():
        objects, styles = judge.classify(batch)
        metrics[name] = score(prompt_list, protocol.images_per_prompt, objects, styles, concepts) if one_kind else {}
        rows[name] = accuracy_row(prompt_list, protocol.images_per_prompt, objects, styles, concepts)
    retain = [i for i, p in enumerate(p for p in prompt_list for _ in range(protocol.images_per_prompt))
              if not {p.object, p.style} & set(concepts)]
    distance = fid_kid(images["base"][retain], images["erased"][retain], feature=JudgeFeatures(judge))
    storage = sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(out) for name in files)
    result = {"method": method, "cell": cell, "concepts": concepts, "sequential": sequential,
              "UA": metrics["erased"].get("UA"), "UA_by_concept": metrics["erased"].get("UA_by_concept"),
              "IRA": metrics["erased"].get("IRA"), "CRA": metrics["erased"].get("CRA"), "FID": distance["FID"],
              "accuracy": rows["erased"], "base_accuracy": rows["base"],
              "self_check_erased": record["self_check"]["erased"],
              "seconds": sum(record["seconds"].values()),
              "peak_memory_bytes": max(record["peak_memory"]["bytes"].values()),
              "storage_bytes": storage, "protocol": {"images_per_prompt": protocol.images_per_prompt}}
    with open(os.path.join(args.work, method, cell.replace(":", "-") + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    if not args.keep_models:
        shutil.rmtree(out)
    return result


def heat_map(path: str, title: str, rows: dict[str, dict[str, float]]) -> None:
    """Rows = erased concept, columns = tested concept, each cell's accuracy as a shade and a number."""
    from PIL import Image, ImageDraw

    cell, left, top = 44, 70, 40
    image = Image.new("RGB", (left + cell * len(WORLD), top + cell * len(rows)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black")
    for j, concept in enumerate(WORLD):
        draw.text((left + j * cell + 2, top - 14), concept[:7], fill="black")
    for i, (erased, row) in enumerate(rows.items()):
        draw.text((4, top + i * cell + cell // 2 - 6), erased[:10], fill="black")
        for j, concept in enumerate(WORLD):
            value = row[concept]
            shade = (int(255 * (1 - value)), int(200 * value + 55), 80)  # red (0) to green (1)
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=shade)
            draw.text((box[0] + 8, box[1] + cell // 2 - 6), f"{value:.2f}", fill="black")
    image.save(path)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def row_key(row: dict) -> tuple:
    return row["benchmark"], row["method"], row.get("cell")


def kept_rows(path: str, new_rows: list[dict]) -> list[dict]:
    """The rows of an earlier summary.json that this run did not produce again, each with its date, so
    that re-running one method (or one group) keeps the others' rows."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        earlier = json.load(f)
    replaced = {row_key(r) for r in new_rows}
    return [{**r, "date": r.get("date", earlier["date"])} for r in earlier["rows"] if row_key(r) not in replaced]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["uce", "salun"])
    parser.add_argument("--concepts", nargs="+", default=list(WORLD), choices=WORLD, help="single-concept cells")
    parser.add_argument("--groups", nargs="*", default=[], metavar="A+B[:sequential]", help="multi-concept cells")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--work", default="concept-matrix", help="cell results, heat maps, summary")
    parser.add_argument("--jobs", type=int, default=1, help="cells run side by side, each in its own process")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per cell")
    parser.add_argument("--keep-models", action="store_true", help="keep each cell's erased model")
    parser.add_argument("--record", action="store_true", help="append the summary rows to benchmarks/results.jsonl")
    parser.add_argument("--cell", nargs=2, metavar=("METHOD", "CELL"), help=argparse.SUPPRESS)  # one cell, in a child
    args = parser.parse_args(argv)
    if args.cell:
        return run_cell(args, *args.cell)

    os.makedirs(args.work, exist_ok=True)
    base_images(args)  # once, before the cells that read it
    todo = [(m, c) for m in args.methods for c in args.concepts + args.groups
            if not os.path.isfile(os.path.join(args.work, m, c.replace(":", "-") + ".json"))]

    def child(job):
        method, cell = job
        os.makedirs(os.path.join(args.work, method), exist_ok=True)
        command = [sys.executable, "-m", "benchmarks.concept_matrix", "--cell", method, cell, "--work", args.work,
                   "--images-per-prompt", str(args.images_per_prompt), "--threads", str(args.threads),
                   *(["--keep-models"] if args.keep_models else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        print(f"{method} {cell}: " + ("done" if done.returncode == 0 else f"FAILED\n{done.stderr[-2000:]}"), flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(child, todo))

    summary = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": []}
    for method in args.methods:
        cells = {}
        for cell in args.concepts + args.groups:
            path = os.path.join(args.work, method, cell.replace(":", "-") + ".json")
            if os.path.isfile(path):
                with open(path) as f:
                    cells[cell] = json.load(f)
        singles = {c: cells[c] for c in args.concepts if c in cells}
        if singles:
            heat_map(os.path.join(args.work, f"{method}-matrix.png"), f"{method}: erase row, test column",
                     {c: r["accuracy"] for c, r in singles.items()})
            summary["rows"].append({
                "benchmark": "concept-matrix", "method": method, "date": summary["date"], "cells": len(singles),
                **{key: round(mean(r[key] for r in singles.values()), 3) for key in ("UA", "IRA", "CRA", "FID")},
                "min_UA": min(r["UA"] for r in singles.values()),
                "min_IRA": min(r["IRA"] for r in singles.values()), "min_CRA": min(r["CRA"] for r in singles.values()),
                "self_check_agrees": mean((r["self_check_erased"] == (r["UA"] >= 0.9)) for r in singles.values()
                                          if r["UA"] >= 0.9 or r["UA"] < 0.5),
                "seconds": round(mean(r["seconds"] for r in singles.values()), 1),
                "peak_memory_gib": round(max(r["peak_memory_bytes"] for r in singles.values()) / 2**30, 2),
                "storage_mb": round(mean(r["storage_bytes"] for r in singles.values()) / 1e6, 1),
                "per_concept": {c: {k: r[k] for k in ("UA", "IRA", "CRA", "FID")} for c, r in singles.items()}})
        for group in args.groups:
            if group in cells:
                r = cells[group]
                summary["rows"].append({"benchmark": "concept-matrix-group", "method": method, "cell": group,
                                        "date": summary["date"],
                                        **{k: r[k] for k in ("UA_by_concept", "IRA", "CRA", "FID", "seconds")},
                                        "self_check_erased": r["self_check_erased"]})
    new_rows = list(summary["rows"])
    summary["rows"] = kept_rows(os.path.join(args.work, "summary.json"), new_rows) + new_rows
    with open(os.path.join(args.work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for row in new_rows:
        print(json.dumps({k: v for k, v in row.items() if k != "per_concept"}))
    if args.record:
        with open(RESULTS, "a") as f:
            f.writelines(json.dumps({**row, "date": summary["date"], "images_per_prompt": args.images_per_prompt})
                         + "\n" for row in new_rows)
    return summary


if __name__ == "__main__":
    main()
