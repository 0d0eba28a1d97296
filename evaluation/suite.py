"""`sd-erase evaluate --suite shapes` and `sd-erase demo`: the shapes world end to end."""

import os
import shutil
import time
from erasure.errors import EraseError
from erasure.model_io import load_pipeline, resolve_model
from erasure.salun import SalUnConfig, run

from .judge import load_judge
from .metrics import Protocol, evaluate_erasure
from .report import write_report
from .shapes import JUDGE_FILE, concept_kind

SUITES = ("shapes",)


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
