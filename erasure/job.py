"""What every erasure method shares: the common config fields, and the job that turns a method into
an output folder (the output contract).

A method is one file beside this one with a config dataclass (a subclass of `EraseConfig`, or of
`TrainingConfig` when it trains) and `erase_pipeline(pipeline, config, session)`, which changes
the pipeline in place and returns (what its erasure.json should add, its in-memory artifacts).
Registering it in erasure/methods.py makes it available to `sd-erase erase --method` and
`erasure.erase`.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, ClassVar

from accelerate import Accelerator

from .errors import EraseError
from .model_io import (BaseModel, OutputFolder, changed_weights, differing_keys, load_pipeline, resolve_model,
                       save_stock_pipeline, weights_fingerprint)
from .prompts import check_concept
from .training import MIXED_PRECISION, PhaseTimer, checkpoints, library_versions, make_accelerator


@dataclass
class EraseConfig:
    """The fields every method reads. Fields left None are filled by `with_defaults` from the
    base model's recommendation (the bundled shapes model has its own) or the method's official value."""

    method: ClassVar[str] = ""
    # where the result goes and how the run is driven; they do not change the result
    RUN_CONTROL: ClassVar[frozenset] = frozenset({"output_dir", "overwrite", "cache_dir"})

    model: str
    concept: str
    output_dir: str | None = None
    revision: str | None = None
    seed: int = 0
    mixed_precision: str = "no"
    overwrite: bool = False
    allow_pickle: bool = False
    cache_dir: str | None = None

    def check(self) -> None:
        """Reject impossible settings with one line that says what to do instead."""
        check_concept(self.concept)
        if self.mixed_precision not in MIXED_PRECISION:
            raise EraseError(f"unknown mixed precision {self.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)}")

    def require_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise EraseError(f"--{name.replace('_', '-')} must be positive, got {value}")

    def with_defaults(self, base: BaseModel) -> "EraseConfig":
        """A copy with every None field filled (see the class docstring)."""
        return self

    def fill(self, *defaults: dict) -> "EraseConfig":
        """A copy whose None (or empty list) fields take the first of `defaults` that names them."""
        merged = {}
        for source in reversed(defaults):
            merged.update(source)
        return replace(self, **{k: v for k, v in merged.items() if getattr(self, k, 0) in (None, [])})

    def check_inputs(self) -> None:
        """Checks that read the user's files (image folders), run before any output is written."""

    def check_with_pipeline(self, pipeline) -> None:
        """Checks that need the loaded pipeline (e.g. prompt lengths), run before any output is written."""

    def settings(self) -> dict:
        """The settings that determine the result."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUN_CONTROL}


@dataclass
class TrainingConfig(EraseConfig):
    """Fields of the methods that fine-tune: optimisation, checkpoints and logging."""

    RUN_CONTROL: ClassVar[frozenset] = EraseConfig.RUN_CONTROL | {
        "resume_from_checkpoint", "report_to", "checkpointing_steps", "checkpoints_total_limit"}

    steps: int = 100
    batch_size: int = 8
    learning_rate: float | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 0
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    report_to: str | None = None

    def check(self) -> None:
        super().check()
        self.require_positive("steps", "batch_size", "learning_rate", "gradient_accumulation_steps")
        if self.checkpointing_steps < 0:
            raise EraseError("--checkpointing-steps must be 0 (off) or a positive step interval")
        if self.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(self.resume_from_checkpoint):
            raise EraseError(f"checkpoint {self.resume_from_checkpoint} does not exist: pass 'latest' or a checkpoint-N folder")


@dataclass
class Session:
    """What a method's erase_pipeline gets besides the pipeline and its config."""

    accelerator: Accelerator
    timer: PhaseTimer
    model_key: str  # fingerprint of the base weights: the cache key of data the base generates
    work_dir: str | None = None  # OUT.incomplete: side files and checkpoints (None for an in-memory erase)
    step_callback: Callable[[int, dict], None] | None = None
    show_progress: bool = True


@dataclass
class EraseResult:
    output_dir: str | None
    record: dict  # what erasure.json holds
    artifacts: dict = field(default_factory=dict)  # e.g. {"saliency_mask": {name: bool tensor}} for SalUn


def _record(config: EraseConfig, base: BaseModel, method_record: dict, session: Session) -> dict:
    return {
        "method": config.method,
        "concept": config.concept,
        "base_model": {"id": base.name, "revision": base.revision},
        "hyperparameters": config.settings(),
        "seed": config.seed,
        "processes": session.accelerator.num_processes,
        **method_record,
        **session.timer.report(),
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _accelerator(config: EraseConfig, project_dir: str | None = None) -> Accelerator:
    return make_accelerator(config.mixed_precision, getattr(config, "gradient_accumulation_steps", 1), project_dir,
                            getattr(config, "report_to", None))


def erase_in_memory(method, pipeline, config: EraseConfig, accelerator=None, step_callback=None,
                    show_progress=True) -> EraseResult:
    """Run `method` (a module of erasure/) on a pipeline you hold; nothing is written."""
    config.check()
    base = BaseModel(pipeline.name_or_path or "", pipeline.name_or_path or "")  # the model's world, if any
    config = config.with_defaults(base)
    config.check()
    config.check_inputs()
    config.check_with_pipeline(pipeline)
    accelerator = accelerator or _accelerator(config)
    session = Session(accelerator, PhaseTimer(accelerator.device), weights_fingerprint(pipeline),
                      step_callback=step_callback, show_progress=show_progress)
    method_record, artifacts = method.erase_pipeline(pipeline, config, session)
    pipeline.to(accelerator.device)  # methods may park frozen parts on the CPU; inference needs them back
    return EraseResult(None, _record(config, base, method_record, session), artifacts)


def run(method, config: EraseConfig, step_callback=None, show_progress=True) -> EraseResult:
    """The full job behind `sd-erase erase`: checks, the method, and the output folder (written only when complete)."""
    config.check()
    if not config.output_dir:
        raise EraseError("--output is missing: name the folder to write the erased pipeline to")
    base = resolve_model(config.model, config.revision, config.allow_pickle)
    config = config.with_defaults(base)
    config.check()
    resume = getattr(config, "resume_from_checkpoint", None)
    output = OutputFolder(config.output_dir, config.overwrite, resume=resume is not None)
    output.check()
    config.check_inputs()
    pipeline = load_pipeline(base, config.allow_pickle)
    config.check_with_pipeline(pipeline)
    accelerator = _accelerator(config, output.partial)
    if accelerator.is_main_process:
        output.begin()
    accelerator.wait_for_everyone()
    _check_same_settings(os.path.join(output.partial, "erase-settings.json"), config, accelerator)
    if getattr(config, "report_to", None):
        accelerator.init_trackers("sd-erase", config={k: str(v) for k, v in config.settings().items()})
    session = Session(accelerator, PhaseTimer(accelerator.device), weights_fingerprint(pipeline), output.partial,
                      step_callback, show_progress)
    try:
        method_record, artifacts = method.erase_pipeline(pipeline, config, session)
    except EraseError:  # bad input found late (e.g. a singular UCE system): leave no half-written output
        if accelerator.is_main_process and resume is None:
            shutil.rmtree(output.partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    record = None
    if accelerator.is_main_process:
        with session.timer.phase("save"):
            save_stock_pipeline(pipeline, output.partial, tokenizer_source=base.path)
        record = _record(config, base, {**method_record, "changed": changed_weights(pipeline, base.path)}, session)
        with open(os.path.join(output.partial, "erasure.json"), "w") as f:
            json.dump(record, f, indent=2)
        for folder in checkpoints(output.partial):  # only needed to resume this run, and large
            shutil.rmtree(folder)
        os.remove(os.path.join(output.partial, "erase-settings.json"))
        output.commit()
        accelerator.print(f"erased {config.concept!r} with {config.method}: {output.path}")
    accelerator.end_training()
    return EraseResult(output.path, record, artifacts)


def _check_same_settings(path: str, config: EraseConfig, accelerator) -> None:
    """A resumed run must continue with the settings it started with."""
    settings = json.loads(json.dumps(config.settings()))
    changed = differing_keys(path, settings)
    if changed:
        raise EraseError(f"the interrupted run in {os.path.dirname(path)} used other settings ({', '.join(changed)}): "
                         "rerun with the same flags, or pass --overwrite to start again")
    if not os.path.isfile(path) and accelerator.is_main_process:
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)

