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
    # each concept's own settings where one run erases several (Plan.checks), for a method that
    # treats their data apart (SalUn's per-concept masks); empty for a one-concept erase
    concept_configs: list = field(default_factory=list)


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


@dataclass
class Plan:
    """What an erase runs (erasure/concepts.py for several concepts): `config` holds the settings
    recorded for the whole erase, `runs` the configs the method runs with in turn (one; or one per
    concept, erased one after another), `checks` one config per concept for the self-check."""

    config: EraseConfig
    sources: dict  # where each value of `config` came from
    runs: list
    checks: list

    @property
    def sequential(self) -> bool:
        return len(self.runs) > 1


def plan_erase(config: EraseConfig, base: BaseModel) -> Plan:
    """Every unset field filled from the base model's profile, else the official defaults, per
    concept, and checked again; several concepts joined into one run where the method can take them."""
    from .concepts import joint_config, per_concept_apart

    filled = []
    for concept in config.concepts:
        one = replace(config, concept=concept)
        settings = (base.profile.settings(type(one), method_of(one).name, concept, lora=one.trains_lora)
                    if base.profile else {})
        one, sources = one.with_defaults(settings)
        one.check()
        filled.append((one, sources))
    configs = [one for one, _ in filled]
    if len(configs) == 1:
        return Plan(configs[0], filled[0][1], configs, configs)
    checks = per_concept_apart(configs)
    if config.one_after_another:
        return Plan(replace(configs[0], concept=config.concepts), filled[0][1], configs, checks)
    joint, sources = joint_config(checks, [s for _, s in filled])
    joint.check()
    return Plan(joint, sources, [joint], checks)


def _run_checked(method, pipeline, plan: Plan, base: BaseModel, session: Session) -> tuple[dict, dict]:
    """The method, with the self-check's data and base numbers taken before it and its verdict after;
    with `until_erased`, in rounds until the verdict passes."""
    from .diffusion import sdxl_conditions
    from .self_check import self_check

    # SDXL: its added conditions travel in the text states every method passes (diffusion.sdxl_conditions)
    with sdxl_conditions(pipeline):
        config = plan.config
        with session.timer.phase("self_check"):
            check = self_check(pipeline, plan.checks, base.profile, session)
        reason = check.cannot_tell()
        if reason and getattr(config, "until_erased", False):  # nothing to adapt to: refuse before the first round
            raise EraseError(f"`until_erased` needs a self-check that can tell, and {reason}")
        if reason:
            session.accelerator.print("warning: " + FIELD.sub(r"\1", reason))
        if getattr(config, "until_erased", False):
            return _until_erased(method, pipeline, config, check, session)
        if plan.sequential:
            method_record, artifacts = _one_after_another(method, pipeline, plan.runs, session)
        else:
            method_record, artifacts = method.load_erase_pipeline()(pipeline, config, session)
        pipeline.to(session.accelerator.device)  # methods may park frozen parts on the CPU
        with session.timer.phase("self_check"):
            method_record["self_check"] = check.verdict(pipeline)
        return method_record, artifacts


def _one_after_another(method, pipeline, runs: list, session: Session) -> tuple[dict, dict]:
    """Each concept's erase on the last one's result, its side files in OUT.incomplete/concept-K; one
    record: the prompts and summaries of all, each run's own under `per_concept`."""
    from .training import checkpoints

    records, artifacts = [], {}
    for k, run in enumerate(runs):
        work = os.path.join(session.work_dir, f"concept-{k + 1}") if session.work_dir else None
        if work and session.accelerator.is_main_process:
            os.makedirs(work, exist_ok=True)
        session.accelerator.print(f"concept {k + 1}/{len(runs)}: {shorten(run.concept)}")
        record, artifacts = method.load_erase_pipeline()(pipeline, run, replace(session, work_dir=work))
        pipeline.to(session.accelerator.device)
        if work and session.accelerator.is_main_process:
            for folder in checkpoints(work):  # only needed while that concept ran
                shutil.rmtree(folder)
            if not os.listdir(work):
                os.rmdir(work)
        records.append({"concept": run.concept, "hyperparameters": run.settings(), **record})
    prompts = {}
    for record in records:
        for key, values in record.get("prompts", {}).items():
            prompts[key] = list(dict.fromkeys(prompts.get(key, []) + values))
    summary = [[f"{shorten(r['concept'], 30)}: {row[0]}", row[1]] for r in records for row in r.get("summary", [])]
    return {"prompts": prompts, "summary": summary, "per_concept": records}, artifacts


def _until_erased(method, pipeline, config, check, session: Session) -> tuple[dict, dict]:
    """Erase in rounds, each from the base weights with the settings the last verdict calls for
    (self_check.next_round), until the self-check passes or `max_rounds` are done. Each round works
    in OUT.incomplete/round-K; rounds.json lists the finished ones, so a resumed run replays their
    decisions and continues the round it was in. The main process's verdict decides for all."""
    from accelerate.utils import broadcast_object_list

    from .folders import TRAINABLE_COMPONENTS
    from .model_io import weight_components
    from .self_check import describe, next_round, passed

    accelerator = session.accelerator
    start = {name: {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
             for name, model in weight_components(pipeline, TRAINABLE_COMPONENTS).items()}
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


def _record(config: EraseConfig, base: BaseModel, family: str, sources: dict, method_record: dict,
            session: Session) -> dict:
    from .training import library_versions

    return {
        "method": config.method,
        "concept": config.concept,
        "base_model": {"id": base.name, "revision": base.revision, "family": family},
        "hyperparameters": config.settings(),
        "settings_source": {k: v for k, v in sources.items() if k not in config.RUN_CONTROL},
        "seed": config.seed,
        "processes": session.accelerator.num_processes,
        **method_record,
        **session.timer.report(),
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _session(plan: Plan, pipeline, work_dir=None, step_callback=None, show_progress=True) -> Session:
    from .model_io import weights_fingerprint
    from .training import PhaseTimer, make_accelerator

    config = plan.config
    accelerator = make_accelerator(config.mixed_precision, getattr(config, "gradient_accumulation_steps", 1), work_dir,
                                   getattr(config, "report_to", None))
    return Session(accelerator, PhaseTimer(accelerator.device), weights_fingerprint(pipeline), work_dir, step_callback,
                   show_progress, plan.checks if len(plan.checks) > 1 and not plan.sequential else [])


def erase_pipeline(pipeline, config: EraseConfig, step_callback=None, show_progress=True) -> EraseResult:
    """Run the method `config` belongs to on a pipeline you hold, in place; nothing is written."""
    method = method_of(config)
    config.check()
    from .model_io import is_sdxl

    family = "sdxl" if is_sdxl(pipeline) else "sd"
    folder = pipeline.name_or_path if pipeline.name_or_path and os.path.isdir(pipeline.name_or_path) else ""
    base = BaseModel(pipeline.name_or_path or "", folder)  # a folder's profile applies to the pipeline loaded from it
    plan = plan_erase(config, base)
    for run in plan.runs:
        run.check_family(family)
        run.check_inputs()
        run.check_with_pipeline(pipeline)
    session = _session(plan, pipeline, step_callback=step_callback, show_progress=show_progress)
    method_record, artifacts = _run_checked(method, pipeline, plan, base, session)
    return EraseResult(None, _record(plan.config, base, family, plan.sources, method_record, session), artifacts)


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
    plan = plan_erase(config, base)
    config, sources = plan.config, plan.sources
    # Everything that can be checked cheaply has been: from here on torch loads and the model with it.
    from .lora_export import save_lora
    from .model_io import changed_weights, load_pipeline, save_stock_pipeline
    from .training import checkpoints

    for run in plan.runs:
        run.check_family(base.family)
        run.check_inputs()
    pipeline = load_pipeline(base, config.allow_pickle)
    for run in plan.runs:
        run.check_with_pipeline(pipeline)
    session = _session(plan, pipeline, output.partial, step_callback, show_progress)
    accelerator = session.accelerator
    if accelerator.is_main_process:
        output.begin()
    accelerator.wait_for_everyone()
    _check_same_settings(os.path.join(output.partial, "erase-settings.json"), config, accelerator)
    if getattr(config, "report_to", None):
        accelerator.init_trackers("sd-erase", config={k: str(v) for k, v in config.settings().items()})
    try:
        method_record, artifacts = _run_checked(method, pipeline, plan, base, session)
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
                                                  config.lora_rank, artifacts.get("lora_layers"))
                _warn_not_in_adapter(method_record["lora"], accelerator)
            if config.output_format != "lora":
                save_stock_pipeline(pipeline, output.partial, base_folder=base.path)
        record = _record(config, base, base.family, sources, {**method_record, "changed": changed}, session)
        with open(os.path.join(output.partial, "erasure.json"), "w") as f:
            json.dump(record, f, indent=2)
        for folder in checkpoints(output.partial):  # only needed to resume this run, and large
            shutil.rmtree(folder)
        os.remove(os.path.join(output.partial, "erase-settings.json"))
        output.commit()
        concepts = config.concepts
        accelerator.print(f"wrote {output.path} ({config.method}, "
                          + (f"concept {shorten(concepts[0])})" if len(concepts) == 1 else
                             f"{len(concepts)} concepts: {shorten(', '.join(concepts))})"))
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
