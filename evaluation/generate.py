"""Generate the images of a prompt set: per-prompt seeds, resumable, sharded across processes.

Image i of a row gets its own CPU generator seeded with the row's `evaluation_seed` + i (rows
without one: `default_seed` + row index), so an image does not depend on batching, device or the
number of processes. Batches are formed the same way on every process and then split between
them (`accelerate launch --num_processes K` or torchrun), so K processes write exactly the files
one process writes. Files already on disk are skipped: an interrupted run resumes where it stopped.
`generation.json` records the settings; `manifest.jsonl` lists every image with its prompt id,
seed, guidance and file.
"""

import json
import os
from dataclasses import asdict, dataclass

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..erasure.diffusion import swapped_scheduler
from ..erasure.errors import EraseError
from ..erasure.folders import differing_keys

from .prompt_sets import PromptRow

FALLBACK_GUIDANCE = 7.5


def process_state() -> PartialState:
    """This process's place in a sharded run. Accelerate uses the CPU (gloo) backend only when
    asked, which `Accelerator()` does from ACCELERATE_USE_CPU but a bare PartialState() does not:
    without this, torchrun on CPUs would run K unaware copies."""
    return PartialState(cpu=not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower()
                        in ("1", "true", "yes"))


@dataclass
class GenerationSettings:
    images_per_prompt: int = 1
    num_inference_steps: int = 50
    guidance_scale: float | None = 7.5  # None: each row's evaluation_guidance (7.5 where a row has none)
    scheduler: str | None = None  # None: the pipeline's own
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    default_seed: int = 0


@dataclass(frozen=True)
class ImageJob:
    file: str
    prompt_id: str
    prompt: str
    seed: int
    guidance: float


def image_jobs(rows: list[PromptRow], settings: GenerationSettings) -> list[ImageJob]:
    jobs = []
    for index, row in enumerate(rows):
        seed = row.seed if row.seed is not None else settings.default_seed + index
        guidance = settings.guidance_scale if settings.guidance_scale is not None else (row.guidance or FALLBACK_GUIDANCE)
        jobs += [ImageJob(f"{index:05d}-{k}.png", row.id, row.prompt, seed + k, guidance)
                 for k in range(settings.images_per_prompt)]
    return jobs


def _batches(jobs: list[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Batches of equal guidance, in job order: the same on every process."""
    by_guidance: dict[float, list[ImageJob]] = {}
    for job in jobs:
        by_guidance.setdefault(job.guidance, []).append(job)
    return [group[i:i + batch_size] for group in by_guidance.values() for i in range(0, len(group), batch_size)]


def check_same_run(folder: str, record: dict) -> None:
    changed = differing_keys(os.path.join(folder, "generation.json"), record)
    if changed:
        raise EraseError(f"{folder} holds images of a different run ({', '.join(changed)} differ): "
                         "choose another output folder; nothing was changed")


def generate_images(pipeline, rows: list[PromptRow], folder: str, settings: GenerationSettings, run_info: dict,
                    show_progress: bool = True) -> list[dict]:
    """Write the images of `rows` into `folder` (skipping those present); returns the manifest records."""
    state = process_state()
    record = {"settings": asdict(settings), "prompts": [r.id for r in rows], **run_info}
    check_same_run(folder, record)
    state.wait_for_everyone()
    if state.is_main_process:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "generation.json"), "w") as f:
            json.dump(record, f, indent=1)
    if settings.scheduler:
        pipeline.scheduler = swapped_scheduler(pipeline, settings.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    jobs = image_jobs(rows, settings)
    todo = [job for job in jobs if not os.path.isfile(os.path.join(folder, job.file))]
    state.wait_for_everyone()  # every process lists what is missing before any writes: same batches everywhere
    with state.split_between_processes(_batches(todo, settings.batch_size)) as my_batches:
        for batch in tqdm(my_batches, desc=f"generating into {os.path.basename(folder)}",
                          disable=not (show_progress and state.is_main_process)):
            images = pipeline(prompt=[job.prompt for job in batch], guidance_scale=batch[0].guidance,
                              num_inference_steps=settings.num_inference_steps, height=settings.height,
                              width=settings.width,
                              generator=[torch.Generator().manual_seed(job.seed) for job in batch]).images
            for job, image in zip(batch, images):
                path = os.path.join(folder, job.file)
                image.save(path + ".tmp.png")
                os.replace(path + ".tmp.png", path)  # a file on disk is always a whole image
    state.wait_for_everyone()
    manifest = [asdict(job) for job in jobs if os.path.isfile(os.path.join(folder, job.file))]
    if state.is_main_process:
        with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in manifest)
    return manifest
