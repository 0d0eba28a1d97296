"""`sd-erase evaluate --suite shapes` and `sd-erase demo`: the shapes world end to end."""

import json
import os
import shutil
import time
from dataclasses import asdict

import torch

from ..erasure.errors import EraseError
from ..erasure.folders import base_of
from ..erasure.job import erase
from ..erasure.methods import DEFAULT_METHOD
from ..erasure.model_io import load_model_or_adapter
from ..erasure.registry import get_method
from ..erasure.self_check import describe
from ..erasure.training import library_versions
from .generate import GenerationSettings, check_same_run, generate_images, process_state
from .judge import load_judge
from .nudity import DEFAULT_THRESHOLD, detect_nudity, summarize_nudity
from .prompt_sets import load_prompts
from .metrics import Protocol, erased_concepts, evaluate_erasure
from .report import write_prompt_report, write_report
from .utility import inception_kwargs, classifier_accuracy, clip_score, fid_kid, load_image, load_images
from .shapes import JUDGE_FILE

def evaluate_shapes(model: str, concept: str | list[str], output_dir: str, base: str = "shapes",
                    protocol: Protocol = Protocol(), overwrite: bool = False, show_progress: bool = True,
                    facilitated_transport: bool = False) -> dict:
    """Evaluate `model` against `base` on the shapes world for an erased `concept` (or several of one
    kind); writes the report folder. `facilitated_transport`: an SPM output's membrane weighed per
    prompt (pipelines/spm_transport.py) instead of fused at full strength."""
    try:
        concepts, _ = erased_concepts(concept)
    except ValueError as err:
        raise EraseError(str(err)) from err
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise EraseError(f"output {output_dir} already exists: choose another --output, or pass --overwrite to replace it")
    erased = load_model_or_adapter(model, facilitated_transport=facilitated_transport)
    pipelines = {"base": load_model_or_adapter(base), "erased": erased}
    judge = load_judge(JUDGE_FILE)
    metrics, images = evaluate_erasure(pipelines["base"], pipelines["erased"], judge, concept, protocol, show_progress)
    metrics.update(model=model, base_model=base, versions=library_versions(),
                   **({"facilitated_transport": True} if facilitated_transport else {}))
    partial = output_dir + ".incomplete"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    write_report(partial, metrics, images,
                 title=f"Erasing “{'”, “'.join(concepts)}”: {os.path.basename(os.path.normpath(model))}")
    if os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.rename(partial, output_dir)
    return metrics


def format_table(metrics: dict) -> str:
    keys = (("UA", "UA"), ("IRA", "IRA"), ("CRA", "CRA"), ("FID vs base", "FID"))
    rows = [(label, metrics["base"][key], metrics["erased"][key]) for label, key in keys]
    rows += [(f"UA '{word}'", metrics["base"]["UA_by_word"][word], value)
             for word, value in metrics["erased"]["UA_by_word"].items()]
    if "UA_by_concept" in metrics["erased"] and metrics["kind"] == "style":  # per word says it for objects
        rows += [(f"UA {concept}", metrics["base"]["UA_by_concept"][concept], value)
                 for concept, value in metrics["erased"]["UA_by_concept"].items()]
    return "\n".join([f"{'metric':<16}{'base':>8}{'erased':>8}"] + [f"{l:<16}{b:>8.3f}{e:>8.3f}" for l, b, e in rows])


def demo(output_dir: str = "shapes-demo", concept: str = "circle", overwrite: bool = False, show_progress: bool = True,
         method: str = DEFAULT_METHOD, model: str = "shapes", images_per_prompt: int = Protocol.images_per_prompt) -> dict:
    """Erase `concept` from a bundled shapes model (`shapes`, `shapes-xl`) with `method`'s defaults, evaluate
    before and after on `images_per_prompt` images per prompt."""

    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise EraseError(f"{output_dir} already exists: choose another --output, or pass --overwrite to replace it")
    start = time.perf_counter()
    model_dir, report_dir = os.path.join(output_dir, f"shapes-erased-{concept}"), os.path.join(output_dir, "report")
    result = erase(get_method(method).config(model=model, concept=concept, output_dir=model_dir, overwrite=overwrite),
                   show_progress=show_progress)
    metrics = evaluate_shapes(model_dir, concept, report_dir, base=model, overwrite=overwrite, show_progress=show_progress,
                              protocol=Protocol(images_per_prompt=images_per_prompt))
    seconds = time.perf_counter() - start
    print(f"\nErased '{concept}' from the bundled {model} model with {method} in {seconds:.0f} s.\n")
    print(format_table(metrics))
    print(f"\nself-check (no judge): {describe(result.record['self_check'])}")
    print(f"\nerased model: {model_dir}\nreport:       {os.path.join(report_dir, 'report.html')}\n"
          f"grids:        {os.path.join(report_dir, 'grid-base.png')}, {os.path.join(report_dir, 'grid-erased.png')}")
    return {**metrics, "demo_seconds": seconds}


PROMPT_SUITES = {"nudity": "nudity-142", "i2p": "i2p", "coco": "coco-10k", "imagenette": "imagenette"}
BLURRED_SUITES = ("nudity", "i2p")  # their images are pixelated in reports unless --no-blur


def generate_both(models: dict[str, str], rows, prompt_set: str, output_dir: str, settings: GenerationSettings,
                  show_progress: bool = True, facilitated_transport: bool = False) -> tuple[dict, dict, dict]:
    """Images of the base and the erased model for the same rows and seeds, in OUTPUT/base and
    OUTPUT/erased (sharded over the processes, resumable). Returns folders, manifests, seconds."""
    state = process_state()
    folders = {name: os.path.join(os.path.abspath(output_dir), name) for name in models}
    run_info = {name: {"model": path, "prompt_set": prompt_set} for name, path in models.items()}
    if facilitated_transport:  # a folder of the other reading of the same adapter is refused
        run_info["erased"]["facilitated_transport"] = True
    for name in models:  # refuse a folder of another run before loading anything
        check_same_run(folders[name], {"settings": asdict(settings), "prompts": [r.id for r in rows], **run_info[name]})
    manifests, seconds = {}, {}
    for name, path in models.items():
        pipeline = load_model_or_adapter(path, facilitated_transport=facilitated_transport and name == "erased")
        if state.device.type == "cuda":
            pipeline = pipeline.to(torch.float16)
        pipeline.to(state.device)
        started = time.perf_counter()
        manifests[name] = generate_images(pipeline, rows, folders[name], settings, run_info[name], show_progress)
        seconds[f"generate_{name}"] = round(time.perf_counter() - started, 2)
        del pipeline
    return folders, manifests, seconds


def _nudity_results(folders, manifests, threshold, show_progress):
    results, summary, flagged = {}, [], {}
    for name in folders:
        detections = detect_nudity([os.path.join(folders[name], m["file"]) for m in manifests[name]], show_progress)
        with open(os.path.join(folders[name], "detections.jsonl"), "w") as f:
            f.writelines(json.dumps({"file": m["file"], "detections": d}) + "\n" for m, d in zip(manifests[name], detections))
        results[name] = summarize_nudity(detections, threshold)
        counted = set(results[name]["classes"])
        flagged[name] = [any(d["class"] in counted and d["score"] >= threshold for d in image) for image in detections]
    summary += [(label, results["base"][key], results["erased"][key])
                for label, key in (("nudity rate (images with any counted class)", "nudity_rate"),
                                   ("images with nudity", "images_with_nudity"), ("total detections", "total_detections"))]
    summary += [(f"{c} detections", results["base"]["per_class"][c], results["erased"]["per_class"][c])
                for c in results["base"]["per_class"]]
    note = f"NudeNet 320n (BGR input), threshold {threshold}, classes {', '.join(results['base']['classes'])}."
    return results, summary, flagged, note


def _coco_results(folders, manifests, real_images, clip_model):
    real = load_images(real_images, 299)
    results = {}
    for name in folders:
        generated = torch.stack([load_image(os.path.join(folders[name], m["file"]), 299) for m in manifests[name]])
        results[name] = fid_kid(real, generated)
        if clip_model:
            full = torch.stack([load_image(os.path.join(folders[name], m["file"])) for m in manifests[name]])
            results[name]["CLIP"] = clip_score(full, [m["prompt"] for m in manifests[name]], clip_model)
    keys = ["FID", "KID_mean"] + (["CLIP"] if clip_model else [])
    summary = [(f"{k} vs real images" if k != "CLIP" else "CLIP score (x100)", results["base"][k], results["erased"][k])
               for k in keys]
    return results, summary, None, f"FID/KID: 2048-d Inception features against {len(real)} real images in {real_images}."


def _classwise_results(folders, manifests, rows, concept, classifier):
    by_id = {r.id: r for r in rows}
    results = {}
    for name in folders:
        per_class = {}
        for cls in dict.fromkeys(r.extra["class"] for r in rows):
            jobs = [m for m in manifests[name] if by_id[m["prompt_id"]].extra["class"] == cls]
            images = torch.stack([load_image(os.path.join(folders[name], m["file"])) for m in jobs])
            per_class[cls] = classifier_accuracy(images, int(by_id[jobs[0]["prompt_id"]].extra["classidx"]), classifier)
        others = [a for c, a in per_class.items() if c != concept]
        results[name] = {"UA": 1 - per_class[concept], "retain_accuracy": sum(others) / len(others),
                         "per_class_accuracy": per_class}
    summary = [("UA (1 - accuracy on the erased class)", results["base"]["UA"], results["erased"]["UA"]),
               ("accuracy on the other classes", results["base"]["retain_accuracy"], results["erased"]["retain_accuracy"])]
    return results, summary, None, f"Classifier {classifier}; erased class {concept}."


def evaluate_prompts(model: str, output_dir: str, suite: str = "nudity", base: str | None = None,
                     prompts: str | None = None, categories: list[str] | None = None, limit: int | None = None,
                     min_nudity: float | None = None, settings: GenerationSettings = GenerationSettings(),
                     threshold: float = DEFAULT_THRESHOLD, blur: bool = True, real_images: str | None = None,
                     clip_model: str | None = None, classifier: str | None = None, concept: str | None = None,
                     show_progress: bool = True, facilitated_transport: bool = False) -> dict | None:
    """Evaluate base and erased model on the same prompts and seeds; write metrics.json and report.html.

    nudity / i2p: NudeNet. coco: FID/KID against `real_images` (+ CLIP score with `clip_model`).
    imagenette: class-wise UA with a local `classifier` for the erased class `concept`.
    Returns the metrics on the main process (None on the others of a sharded run).
    """
    state = process_state()
    base = base or base_of(model)
    if not base:
        raise EraseError(f"{model} has no erasure.json naming its base model: pass --base")
    prompt_set = prompts or PROMPT_SUITES[suite]
    rows = load_prompts(prompt_set, categories, limit, min_nudity)
    if not rows:
        raise EraseError(f"no prompts left in {prompt_set} after the filters: loosen --category/--min-nudity/--limit")
    if suite == "coco":  # everything a suite needs is checked before hours of generation
        if not real_images:
            raise EraseError("--suite coco needs --real-images DIR: a folder of real COCO images for FID/KID")
        load_images(real_images, 8)
        inception_kwargs(None)
        if clip_model and not os.path.isdir(clip_model):
            raise EraseError(f"CLIP model folder {clip_model} does not exist: pass a local CLIP folder")
    if suite == "imagenette":
        classes = {r.extra.get("class") for r in rows}
        if not classifier or not os.path.isdir(classifier):
            raise EraseError("--suite imagenette needs --classifier DIR: a local image-classification folder "
                             "(e.g. `hf download microsoft/resnet-50 --local-dir resnet-50`)")
        if concept not in classes:
            raise EraseError(f"--concept must name the erased class, one of: {', '.join(sorted(c for c in classes if c))}")
    start = time.perf_counter()
    models = {"base": base, "erased": model}
    folders, manifests, seconds = generate_both(models, rows, prompt_set, output_dir, settings, show_progress,
                                                facilitated_transport)
    if not state.is_main_process:
        return None
    if suite in ("nudity", "i2p"):
        results, summary, flagged, note = _nudity_results(folders, manifests, threshold, show_progress)
    elif suite == "coco":
        results, summary, flagged, note = _coco_results(folders, manifests, real_images, clip_model)
    else:
        results, summary, flagged, note = _classwise_results(folders, manifests, rows, concept, classifier)
    seconds["total"] = round(time.perf_counter() - start, 2)
    metrics = {"suite": suite, "model": model, "base_model": base, **results, "seconds": seconds,
               "versions": library_versions(),
               "protocol": {"prompts": prompt_set, "prompt_count": len(rows), "categories": categories, "limit": limit,
                            "min_nudity": min_nudity, "generation": asdict(settings), "metrics": note,
                            "guidance": "per-prompt evaluation_guidance" if settings.guidance_scale is None
                            else f"fixed {settings.guidance_scale}"}}
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    write_prompt_report(output_dir, metrics, manifests, summary, flagged, blur)
    return metrics
