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
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

from .config import EraseConfig
from .errors import FIELD, EraseError, shorten
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

    @property
    def erased(self) -> bool | None:
        """The self-check's verdict (erasure/self_check.py): True, False, or None where it cannot tell."""
        check = self.record["self_check"]
        return None if check["margin_remaining"] is None else check["erased"]


def with_model_defaults(config: EraseConfig, base: BaseModel) -> tuple[EraseConfig, dict]:
    """`config` with every unset field filled from the base model's profile, else the official
    defaults, and checked again; plus where each value came from."""
    profile = base.profile
    settings = profile.settings(type(config), method_of(config).name, config.concept) if profile else {}
    config, sources = config.with_defaults(settings)
    config.check()
    return config, sources


def _run_checked(method, pipeline, config: EraseConfig, base: BaseModel, session: Session) -> tuple[dict, dict]:
    """The method, with the self-check's data and base numbers taken before it and its verdict after;
    with `until_erased`, in rounds until the verdict passes."""
    from .self_check import SelfCheck

    with session.timer.phase("self_check"):
        check = SelfCheck(pipeline, config, base.profile, session)
    reason = check.cannot_tell()
    if reason and getattr(config, "until_erased", False):  # nothing to adapt to: refuse before the first round
        raise EraseError(f"`until_erased` needs a self-check that can tell, and {reason}")
    if reason:
        session.accelerator.print("warning: " + FIELD.sub(r"\1", reason))
    if getattr(config, "until_erased", False):
        return _until_erased(method, pipeline, config, check, session)
    method_record, artifacts = method.load_erase_pipeline()(pipeline, config, session)
    pipeline.to(session.accelerator.device)  # methods may park frozen parts on the CPU
    with session.timer.phase("self_check"):
        method_record["self_check"] = check.verdict(pipeline)
    return method_record, artifacts


def _until_erased(method, pipeline, config, check, session: Session) -> tuple[dict, dict]:
    """Erase in rounds, each from the base weights with the settings the last verdict calls for
    (self_check.next_round), until the self-check passes or `max_rounds` are done. Each round works
    in OUT.incomplete/round-K; rounds.json lists the finished ones, so a resumed run replays their
    decisions and continues the round it was in. The main process's verdict decides for all."""
    from accelerate.utils import broadcast_object_list

    from .self_check import describe, next_round, passed

    accelerator = session.accelerator
    start = {name: {k: v.detach().to("cpu", copy=True) for k, v in getattr(pipeline, name).state_dict().items()}
             for name in ("unet", "text_encoder")}
    log_file = os.path.join(session.work_dir, "rounds.json") if session.work_dir else None
    finished = []
    if log_file and os.path.isfile(log_file):
        with open(log_file) as f:
            finished = json.load(f)
        if finished and (passed(finished[-1]["self_check"]) or len(finished) == config.max_rounds):
            finished.pop()  # it ended the run, but its weights were not saved: run it again
    rounds, tried, round_config, asked = [], {}, config, config.settings()
    for k in range(config.max_rounds):
        work = os.path.join(session.work_dir, f"round-{k}") if session.work_dir else None
        changed = {n: v for n, v in round_config.settings().items() if v != asked[n]}
        if k < len(finished):
            verdict = finished[k]["self_check"]
        else:
            for name, state in start.items():
                getattr(pipeline, name).load_state_dict(state)
            if work and accelerator.is_main_process:
                os.makedirs(work, exist_ok=True)
            resume = config.resume_from_checkpoint if k == len(finished) else None
            method_record, artifacts = method.load_erase_pipeline()(
                pipeline, replace(round_config, resume_from_checkpoint=resume), replace(session, work_dir=work))
            pipeline.to(accelerator.device)
            with session.timer.phase("self_check"):
                verdict = check.verdict(pipeline)
            if accelerator.num_processes > 1:  # weights agree within float tolerance; one verdict for all
                verdict = broadcast_object_list([verdict])[0]
            accelerator.print(f"round {k + 1}/{config.max_rounds}: learning rate {round_config.learning_rate:g}"
                              + "".join(f", {n} {v}" for n, v in changed.items() if n != "learning_rate")
                              + f": {describe(verdict)}")
        rounds.append({"round": k + 1, "learning_rate": round_config.learning_rate,
                       "settings": changed,
                       "self_check": {key: verdict[key] for key in ("erased", "margin_remaining", "retain_drift",
                                                                    "retain_kept")}})
        if log_file and accelerator.is_main_process:
            with open(log_file, "w") as f:
                json.dump(rounds, f, indent=1)
        following = next_round(round_config, verdict, tried)
        if following is None or k + 1 == config.max_rounds:
            break
        round_config = following
    if work and accelerator.is_main_process:  # the last round's side files (e.g. its mask) are the output's
        for name in os.listdir(work):
            if not name.startswith("checkpoint-"):
                os.replace(os.path.join(work, name), os.path.join(session.work_dir, name))
        for k in range(len(rounds)):
            shutil.rmtree(os.path.join(session.work_dir, f"round-{k}"), ignore_errors=True)
        os.remove(log_file)
    method_record.update(self_check=verdict, rounds=rounds,
                         final_settings=json.loads(json.dumps(round_config.settings())))
    return method_record, artifacts


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
    method_record, artifacts = _run_checked(method, pipeline, config, base, session)
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
    from .lora_export import save_lora
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
        method_record, artifacts = _run_checked(method, pipeline, config, base, session)
    except EraseError:  # bad input found late (e.g. a singular closed-form system): leave no half-written output
        if accelerator.is_main_process and resume is None:
            shutil.rmtree(output.partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    record = None
    if accelerator.is_main_process:
        changed, changed_names = changed_weights(pipeline, base.path)
        with session.timer.phase("save"):
            if config.output_format != "pipeline":
                method_record["lora"] = save_lora(pipeline, base.path, output.partial, changed_names,
                                                  config.lora_rank)
                _warn_not_in_adapter(method_record["lora"], accelerator)
            if config.output_format != "lora":
                save_stock_pipeline(pipeline, output.partial, base_folder=base.path)
        record = _record(config, base, sources, {**method_record, "changed": changed},
                         session)
        with open(os.path.join(output.partial, "erasure.json"), "w") as f:
            json.dump(record, f, indent=2)
        for folder in checkpoints(output.partial):  # only needed to resume this run, and large
            shutil.rmtree(folder)
        os.remove(os.path.join(output.partial, "erase-settings.json"))
        output.commit()
        accelerator.print(f"wrote {output.path} ({config.method}, concept {shorten(config.concept)})")
    accelerator.end_training()
    return EraseResult(output.path, record, artifacts)


def _warn_not_in_adapter(lora: dict, accelerator) -> None:
    left_out = lora["not_in_adapter"]
    if left_out:
        accelerator.print(f"warning: the LoRA leaves out {len(left_out)} changed tensors a LoRA cannot hold (biases, "
                          f"norms, embeddings; e.g. {left_out[0]}): use --output-format both for the whole erasure")


def _check_same_settings(path: str, config: EraseConfig, accelerator) -> None:
    """A resumed run must continue with the settings it started with."""
    settings = json.loads(json.dumps(config.settings()))
    changed = differing_keys(path, settings)
    if changed:
        raise EraseError(f"the interrupted run in {os.path.dirname(path)} used other settings ({', '.join(changed)}): "
                         "rerun with the same settings, or pass `overwrite` to start again")
    # every process reads the file before the main one writes it (a half-written file reads as other settings)
    accelerator.wait_for_everyone()
    if not os.path.isfile(path) and accelerator.is_main_process:
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)
