"""Training plumbing shared by the methods: the Accelerator, checkpoints, phase timings and memory."""

import os
import re
import resource
import shutil
import time
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration

from .config import MixedPrecision
from .errors import EraseError

MIXED_PRECISION = MixedPrecision.__args__
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def make_accelerator(mixed_precision: str = "no", gradient_accumulation_steps: int = 1,
                     project_dir: str | None = None, report_to: str | None = None) -> Accelerator:
    if mixed_precision not in MIXED_PRECISION:
        raise EraseError(f"unknown mixed precision {mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)}")
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise EraseError("--report-to tensorboard needs tensorboard: pip install 'sd-erasure[tensorboard]'") from err
    elif report_to is not None:
        raise EraseError(f"unknown --report-to {report_to!r}: only tensorboard is supported")
    project = ProjectConfiguration(project_dir=project_dir, logging_dir=os.path.join(project_dir, "logs")) if project_dir else None
    # AcceleratorState is a process-wide singleton that refuses a second erase with another
    # precision (a notebook erasing twice); the process-group part (PartialState) is kept.
    AcceleratorState._reset_state()
    try:
        return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps,
                           log_with=report_to, project_config=project)
    except ValueError as err:  # e.g. fp16 without a GPU
        raise EraseError(f"--mixed-precision {mixed_precision}: {err}".splitlines()[0] + " (use bf16 or no on this machine)") from err


def checkpoints(folder: str) -> list[str]:
    """`checkpoint-N` folders in `folder`, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := CHECKPOINT.match(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def checkpoint_step(path: str) -> int:
    return int(CHECKPOINT.match(os.path.basename(os.path.normpath(path))).group(1))


def save_checkpoint(accelerator: Accelerator, folder: str, step: int, total_limit: int | None) -> None:
    """accelerator.save_state into folder/checkpoint-step, keeping at most `total_limit` checkpoints."""
    accelerator.save_state(os.path.join(folder, f"checkpoint-{step}"))
    if accelerator.is_main_process and total_limit:
        for old in checkpoints(folder)[:-total_limit]:
            shutil.rmtree(old)


def library_versions() -> dict:
    """Versions that decide numbers, recorded next to every result."""
    import platform

    import accelerate
    import diffusers
    import transformers

    from .. import __version__

    return {"sd-erasure": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own memory map;
    ru_maxrss also carries the parent's peak from before exec (a subprocess of a big process reports the parent's)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PhaseTimer:
    """Seconds and peak memory per phase (CUDA: peak allocated in the phase; CPU: peak RSS so far)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.peak_memory_bytes: dict[str, int] = {}

    @contextmanager
    def phase(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = peak_rss_bytes()
        # a phase entered twice (e.g. the self-check, before and after the method) adds up
        self.peak_memory_bytes[name] = max(peak, self.peak_memory_bytes.get(name, 0))
        self.seconds[name] = round(self.seconds.get(name, 0) + time.perf_counter() - start, 3)

    def report(self) -> dict:
        kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_max_rss"
        return {"seconds": dict(self.seconds), "peak_memory": {"kind": kind, "bytes": dict(self.peak_memory_bytes)}}


def frozen_copy(module: torch.nn.Module, names) -> dict[str, torch.Tensor]:
    """Detached copies of the named parameters: with torch.func.functional_call they turn the
    model being trained back into the frozen base, at the memory cost of the trained tensors only."""
    parameters = dict(module.named_parameters())
    return {name: parameters[name].detach().clone() for name in names}


def train_only(module: torch.nn.Module, names, gradient_checkpointing: bool = False) -> dict[str, torch.nn.Parameter]:
    """Put `module` in training mode with gradients for the named parameters alone; its parameters by name."""
    names = set(names)
    for name, param in module.named_parameters():
        param.requires_grad_(name in names)
    if gradient_checkpointing:
        module.enable_gradient_checkpointing()
    module.train()
    return dict(module.named_parameters())


def freeze(module: torch.nn.Module) -> None:
    """Back to inference: eval mode, no gradients anywhere."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)


def fit(accelerator: Accelerator, model, optimizer, compute_loss, config, *, checkpoint_dir: str | None = None,
        step_callback=None, show_progress: bool = True, description: str = "training",
        max_grad_norm: float | None = None) -> tuple[dict, int]:
    """The optimisation loop every trained method shares; returns the last step's logs and the step it resumed from.

    `config` (a TrainingConfig) gives the steps, gradient accumulation, checkpointing and resume.
    `compute_loss(step, micro)` returns (loss, logs) for one micro-batch; its randomness must depend
    only on (step, micro) so that a resumed run repeats the uninterrupted one. `max_grad_norm`
    clips the trained parameters' gradient norm before each optimizer step.
    """
    steps, gradient_accumulation_steps = config.steps, config.gradient_accumulation_steps
    resume_from_checkpoint, checkpointing_steps = config.resume_from_checkpoint, config.checkpointing_steps
    from tqdm.auto import tqdm

    from .errors import TrainingDiverged

    start = 0
    if resume_from_checkpoint and checkpoint_dir:
        found = checkpoints(checkpoint_dir)[-1:] if resume_from_checkpoint == "latest" else [resume_from_checkpoint]
        if found:
            accelerator.load_state(found[0])
            start = checkpoint_step(found[0])
            accelerator.print(f"resuming from {found[0]} (step {start})")
        else:
            accelerator.print("no checkpoint to resume from: starting at step 0")
    logs = {}
    progress = tqdm(range(start, steps), initial=start, total=steps, desc=description,
                    disable=not (show_progress and accelerator.is_main_process))
    for step in progress:
        for micro in range(gradient_accumulation_steps):
            with accelerator.accumulate(model):
                loss, logs = compute_loss(step, micro)
                if not torch.isfinite(loss):
                    where = (f"; the last checkpoint is in {checkpoint_dir}"
                             if checkpoint_dir and checkpoints(checkpoint_dir) else "")
                    raise TrainingDiverged(f"loss became {loss.item()} at step {step + 1}: lower --learning-rate "
                                           f"or use --mixed-precision no{where}")
                accelerator.backward(loss)
                if max_grad_norm is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        accelerator.log(logs, step=step + 1)
        if checkpoint_dir and checkpointing_steps and (step + 1) % checkpointing_steps == 0:
            save_checkpoint(accelerator, checkpoint_dir, step + 1, config.checkpoints_total_limit)
        if step_callback:
            step_callback(step + 1, logs)
    # Undo what prepare() added (the mixed-precision forward wrapper) so inference runs as before.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    accelerator.free_memory()
    return logs, start
