"""What every erasure method shares: the job that turns a config into an output folder (the
output contract) or changes a pipeline in memory.

`erase(config)` checks everything it can before torch is imported or a model loaded (the config,
the output folder, the model folder and its profile), then loads the base pipeline, runs the
registered method's `erase_pipeline(pipeline, config, session)`, and writes OUT/ (a stock
pipeline and erasure.json) only when it is complete.
"""

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from .config import EraseConfig
from .errors import EraseError, shorten
from .folders import BaseModel, OutputFolder, differing_keys, resolve_model
from .registry import method_of


@dataclass
class Session:
    """What a method's erase_pipeline gets besides the pipeline and its config."""

    accelerator: Any  # accelerate.Accelerator
    timer: Any  # training.PhaseTimer
    model_key: str  # fingerprint of the base weights: the cache key of data the base generates
    work_dir: str | None = None  # OUT.incomplete: side files and checkpoints (None for an in-memory erase)
    step_callback: Callable[[int, dict], None] | None = None
    show_progress: bool = True


@dataclass
class EraseResult:
    output_dir: str | None
    record: dict  # what erasure.json holds
    artifacts: dict = field(default_factory=dict)  # in-memory side results, e.g. {"saliency_mask": {name: tensor}}


def with_model_defaults(config: EraseConfig, base: BaseModel) -> tuple[EraseConfig, dict]:
    """`config` with every unset field filled from the base model's profile, else the official
    defaults, and checked again; plus where each value came from."""
    profile = base.profile
    settings = profile.settings(type(config), method_of(config).name, config.concept) if profile else {}
    config, sources = config.with_defaults(settings)
    config.check()
    return config, sources


def _record(config: EraseConfig, base: BaseModel, sources: dict, method_record: dict, session: Session) -> dict:
    from .training import library_versions

    return {
        "method": config.method,
        "concept": config.concept,
        "base_model": {"id": base.name, "revision": base.revision},
        "hyperparameters": config.settings(),
        "settings_source": {k: v for k, v in sources.items() if k not in config.RUN_CONTROL},
        "seed": config.seed,
        "processes": session.accelerator.num_processes,
        **method_record,
        **session.timer.report(),
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _session(config: EraseConfig, pipeline, work_dir=None, step_callback=None, show_progress=True) -> Session:
    from .model_io import weights_fingerprint
    from .training import PhaseTimer, make_accelerator

    accelerator = make_accelerator(config.mixed_precision, getattr(config, "gradient_accumulation_steps", 1), work_dir,
                                   getattr(config, "report_to", None))
    return Session(accelerator, PhaseTimer(accelerator.device), weights_fingerprint(pipeline), work_dir, step_callback,
                   show_progress)


def erase_pipeline(pipeline, config: EraseConfig, step_callback=None, show_progress=True) -> EraseResult:
    """Run the method `config` belongs to on a pipeline you hold, in place; nothing is written."""
    method = method_of(config)
    config.check()
    folder = pipeline.name_or_path if pipeline.name_or_path and os.path.isdir(pipeline.name_or_path) else ""
    base = BaseModel(pipeline.name_or_path or "", folder)  # a folder's profile applies to the pipeline loaded from it
    config, sources = with_model_defaults(config, base)
    config.check_inputs()
    config.check_with_pipeline(pipeline)
    session = _session(config, pipeline, step_callback=step_callback, show_progress=show_progress)
    method_record, artifacts = method.load_erase_pipeline()(pipeline, config, session)
    pipeline.to(session.accelerator.device)  # methods may park frozen parts on the CPU; inference needs them back
    return EraseResult(None, _record(config, base, sources, method_record, session), artifacts)


def erase(config: EraseConfig, step_callback=None, show_progress=True) -> EraseResult:
    """The full job behind `sd-erase erase`: checks, the method, and the output folder (written only when complete)."""
    method = method_of(config)
    config.check()
    if not config.output_dir:
        raise EraseError("`output_dir` is missing: name the folder to write the erased pipeline to")
    resume = getattr(config, "resume_from_checkpoint", None)
    output = OutputFolder(config.output_dir, config.overwrite, resume=resume is not None)
    output.check()
    output.check_writable()
    base = resolve_model(config.model, config.revision, config.allow_pickle)
    config, sources = with_model_defaults(config, base)
    # Everything that can be checked cheaply has been: from here on torch loads and the model with it.
    from .model_io import changed_weights, load_pipeline, save_stock_pipeline
    from .training import checkpoints

    config.check_inputs()
    pipeline = load_pipeline(base, config.allow_pickle)
    config.check_with_pipeline(pipeline)
    session = _session(config, pipeline, output.partial, step_callback, show_progress)
    accelerator = session.accelerator
    if accelerator.is_main_process:
        output.begin()
    accelerator.wait_for_everyone()
    _check_same_settings(os.path.join(output.partial, "erase-settings.json"), config, accelerator)
    if getattr(config, "report_to", None):
        accelerator.init_trackers("sd-erase", config={k: str(v) for k, v in config.settings().items()})
    try:
        method_record, artifacts = method.load_erase_pipeline()(pipeline, config, session)
    except EraseError:  # bad input found late (e.g. a singular closed-form system): leave no half-written output
        if accelerator.is_main_process and resume is None:
            shutil.rmtree(output.partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    record = None
    if accelerator.is_main_process:
        with session.timer.phase("save"):
            save_stock_pipeline(pipeline, output.partial, base_folder=base.path)
        record = _record(config, base, sources, {**method_record, "changed": changed_weights(pipeline, base.path)},
                         session)
        with open(os.path.join(output.partial, "erasure.json"), "w") as f:
            json.dump(record, f, indent=2)
        for folder in checkpoints(output.partial):  # only needed to resume this run, and large
            shutil.rmtree(folder)
        os.remove(os.path.join(output.partial, "erase-settings.json"))
        output.commit()
        accelerator.print(f"erased {shorten(config.concept)} with {config.method}: {output.path}")
    accelerator.end_training()
    return EraseResult(output.path, record, artifacts)


def _check_same_settings(path: str, config: EraseConfig, accelerator) -> None:
    """A resumed run must continue with the settings it started with."""
    settings = json.loads(json.dumps(config.settings()))
    changed = differing_keys(path, settings)
    if changed:
        raise EraseError(f"the interrupted run in {os.path.dirname(path)} used other settings ({', '.join(changed)}): "
                         "rerun with the same settings, or pass `overwrite` to start again")
    if not os.path.isfile(path) and accelerator.is_main_process:
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)
