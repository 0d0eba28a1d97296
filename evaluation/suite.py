"""`sd-erase evaluate --suite shapes` and `sd-erase demo`: the shapes world end to end."""

import json
import os
import shutil
import time
from dataclasses import asdict

import torch
from accelerate import PartialState
from erasure.errors import EraseError
from erasure.model_io import load_pipeline, resolve_model
from erasure.salun import SalUnConfig, run

from .generate import GenerationSettings, check_same_run, generate_images
from .judge import load_judge
from .nudity import DEFAULT_THRESHOLD, detect_nudity, summarize_nudity
from .prompt_sets import load_prompts
from .metrics import Protocol, evaluate_erasure
from .report import write_prompt_report, write_report
from .shapes import JUDGE_FILE, concept_kind



def evaluate_shapes(model: str, concept: str, output_dir: str, base: str = "shapes", protocol: Protocol = Protocol(),
                    overwrite: bool = False, show_progress: bool = True) -> dict:
    """Evaluate `model` against `base` on the shapes world for an erased `concept`; writes the report folder."""
    try:
        concept_kind(concept)
    except ValueError as err:
        raise EraseError(str(err)) from err
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise EraseError(f"output {output_dir} already exists: choose another --output, or pass --overwrite to replace it")
    pipelines = {name: load_pipeline(resolve_model(path)) for name, path in (("base", base), ("erased", model))}
    judge = load_judge(JUDGE_FILE)
    metrics, images = evaluate_erasure(pipelines["base"], pipelines["erased"], judge, concept, protocol, show_progress)
    metrics.update(model=model, base_model=base)
    partial = output_dir + ".incomplete"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    write_report(partial, metrics, images, title=f"Erasing “{concept}”: {os.path.basename(os.path.normpath(model))}")
    if os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.rename(partial, output_dir)
    return metrics


def format_table(metrics: dict) -> str:
    keys = (("UA", "UA"), ("IRA", "IRA"), ("CRA", "CRA"), ("FID vs base", "FID"))
    rows = [(label, metrics["base"][key], metrics["erased"][key]) for label, key in keys]
    rows += [(f"UA '{word}'", metrics["base"]["UA_by_word"][word], value)
             for word, value in metrics["erased"]["UA_by_word"].items()]
    return "\n".join([f"{'metric':<16}{'base':>8}{'erased':>8}"] + [f"{l:<16}{b:>8.3f}{e:>8.3f}" for l, b, e in rows])


def demo(output_dir: str = "shapes-demo", concept: str = "circle", overwrite: bool = False, show_progress: bool = True) -> dict:
    """Erase `concept` from the bundled shapes model with SalUn's defaults, evaluate before and after."""

    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise EraseError(f"{output_dir} already exists: choose another --output, or pass --overwrite to replace it")
    start = time.perf_counter()
    model_dir, report_dir = os.path.join(output_dir, f"shapes-erased-{concept}"), os.path.join(output_dir, "report")
    run(SalUnConfig(model="shapes", concept=concept, output_dir=model_dir, overwrite=overwrite), show_progress=show_progress)
    metrics = evaluate_shapes(model_dir, concept, report_dir, overwrite=overwrite, show_progress=show_progress)
    seconds = time.perf_counter() - start
    print(f"\nErased '{concept}' from the bundled shapes model with SalUn in {seconds:.0f} s.\n")
    print(format_table(metrics))
    print(f"\nerased model: {model_dir}\nreport:       {os.path.join(report_dir, 'report.html')}\n"
          f"grids:        {os.path.join(report_dir, 'grid-base.png')}, {os.path.join(report_dir, 'grid-erased.png')}")
    return {**metrics, "demo_seconds": seconds}


NUDITY_SUITES = {"nudity": "nudity-142", "i2p": "i2p"}  # suite -> default prompt set


def _base_of(model: str) -> str | None:
    record = os.path.join(model, "erasure.json")
    if os.path.isfile(record):
        with open(record) as f:
            return json.load(f)["base_model"]["id"]
    return None


def evaluate_nudity(model: str, output_dir: str, suite: str = "nudity", base: str | None = None,
                    prompts: str | None = None, categories: list[str] | None = None, limit: int | None = None,
                    min_nudity: float | None = None, settings: GenerationSettings = GenerationSettings(),
                    threshold: float = DEFAULT_THRESHOLD, blur: bool = True, show_progress: bool = True) -> dict:
    """Generate with the base and the erased model on the same prompts and seeds, run NudeNet on
    both, write metrics.json and report.html. Images already in `output_dir` are kept (resume)."""
    state = PartialState()
    base = base or _base_of(model)
    if not base:
        raise EraseError(f"{model} has no erasure.json naming its base model: pass --base")
    prompt_set = prompts or NUDITY_SUITES[suite]
    rows = load_prompts(prompt_set, categories, limit, min_nudity)
    if not rows:
        raise EraseError(f"no prompts left in {prompt_set} after the filters: loosen --category/--min-nudity/--limit")
    models = {"base": base, "erased": model}
    folders = {name: os.path.join(os.path.abspath(output_dir), name) for name in models}
    run_info = {name: {"model": path, "prompt_set": prompt_set} for name, path in models.items()}
    for name in models:  # refuse a folder of another run before loading anything
        check_same_run(folders[name], {"settings": asdict(settings), "prompts": [r.id for r in rows], **run_info[name]})
    start = time.perf_counter()
    manifests, seconds = {}, {}
    for name, path in models.items():
        pipeline = load_pipeline(resolve_model(path))
        if state.device.type == "cuda":
            pipeline = pipeline.to(torch.float16)
        pipeline.to(state.device)
        started = time.perf_counter()
        manifests[name] = generate_images(pipeline, rows, folders[name], settings, run_info[name], show_progress)
        seconds[f"generate_{name}"] = round(time.perf_counter() - started, 2)
        del pipeline
    metrics = None
    if state.is_main_process:
        detections, results = {}, {}
        for name in models:
            detections[name] = detect_nudity([os.path.join(folders[name], m["file"]) for m in manifests[name]], show_progress)
            with open(os.path.join(folders[name], "detections.jsonl"), "w") as f:
                f.writelines(json.dumps({"file": m["file"], "detections": d}) + "\n"
                             for m, d in zip(manifests[name], detections[name]))
            results[name] = summarize_nudity(detections[name], threshold)
        seconds["total"] = round(time.perf_counter() - start, 2)
        metrics = {"suite": suite, "model": model, "base_model": base, **results, "seconds": seconds,
                   "protocol": {"prompts": prompt_set, "prompt_count": len(rows), "categories": categories,
                                "limit": limit, "min_nudity": min_nudity, "generation": asdict(settings),
                                "guidance": "per-prompt evaluation_guidance" if settings.guidance_scale is None
                                else f"fixed {settings.guidance_scale}",
                                "detector": "320n (BGR input)"}}
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        write_prompt_report(output_dir, metrics, manifests, detections, blur)
    return metrics
