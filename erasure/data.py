"""Forget and retain sets as latents: synthesized by the base pipeline, or encoded from image folders.

Latents are what training consumes, so synthesis stops at the latent (no decode/encode round
trip) and encoding happens once. Both are cached on disk, one file per batch, keyed by
everything that determines them: a second run with the same data loads instead of
regenerating, and an interrupted synthesis resumes at the next missing batch.
"""

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .diffusion import seeded_generator, swapped_scheduler
from .errors import EraseError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class LatentSet:
    """Latents (N, C, h, w) in the UNet's scaled latent space, with the caption of each."""

    latents: torch.Tensor
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def default_cache_dir() -> str:
    if os.environ.get("SD_ERASURE_CACHE"):
        return os.environ["SD_ERASURE_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sd-erasure")


def cache_folder(cache_dir: str, kind: str, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = os.path.join(cache_dir, kind, digest)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "key.json"), "w") as f:
        json.dump(key, f, indent=1)
    return folder


def cached_batches(folder: str, batches: list, compute, description: str, show_progress: bool) -> torch.Tensor:
    """Load each batch's latents from `folder`, computing (and saving) only the missing ones."""
    parts = []
    for index, batch in enumerate(tqdm(batches, desc=description, disable=not show_progress)):
        file = os.path.join(folder, f"batch-{index:05d}.safetensors")
        if os.path.isfile(file):
            parts.append(load_file(file)["latents"])
            continue
        latents = compute(index, batch).float().cpu().contiguous()
        save_file({"latents": latents}, file + ".tmp")
        os.replace(file + ".tmp", file)  # a batch file is either whole or absent
        parts.append(latents)
    return torch.cat(parts)


def synthesize_latents(pipeline, prompts: list[str], num_images: int, *, seed: int, num_inference_steps: int,
                       guidance_scale: float, resolution: int, batch_size: int, model_key: str,
                       scheduler: str | None = None, cache_dir: str | None = None, autocast=None,
                       show_progress: bool = True, stream: str = "synthesis") -> LatentSet:
    """Generate `num_images` latents, cycling through `prompts`, with the pipeline's own sampler or `scheduler`.
    `stream` names the seeds' stream: sets of other streams never share a starting noise."""
    captions = [prompts[i % len(prompts)] for i in range(num_images)]
    batches = [captions[i:i + batch_size] for i in range(0, num_images, batch_size)]
    sampler = swapped_scheduler(pipeline, scheduler) if scheduler else pipeline.scheduler
    key = dict(model=model_key, prompts=prompts, num_images=num_images, seed=seed, steps=num_inference_steps,
               guidance_scale=guidance_scale, resolution=resolution, batch_size=batch_size,
               scheduler=type(sampler).__name__, scheduler_config=dict(sampler.config),
               **({"stream": stream} if stream != "synthesis" else {}))  # keys of existing caches stay valid
    folder = cache_folder(cache_dir or default_cache_dir(), "synthesized", key)
    pipeline.set_progress_bar_config(disable=True)

    def generate(index, batch_prompts):
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            return pipeline(prompt=batch_prompts, num_inference_steps=num_inference_steps,
                            guidance_scale=guidance_scale, height=resolution, width=resolution,
                            generator=seeded_generator(seed, stream, index), output_type="latent").images

    own, pipeline.scheduler = pipeline.scheduler, sampler
    try:
        latents = cached_batches(folder, batches, generate, f"synthesizing {prompts[0]!r}", show_progress)
    finally:
        pipeline.scheduler = own  # the erased pipeline is saved with the scheduler it came with
    return LatentSet(latents, captions)


def data_resolution(pipeline, config) -> int:
    """Image size of a method's data: the config's `resolution` where it has one set, else the model's own."""
    return getattr(config, "resolution", None) or pipeline.unet.config.sample_size * pipeline.vae_scale_factor


def training_latents(pipeline, config, prompts: list[str], *, model_key: str, accelerator, show_progress: bool = True,
                     images: str | None = None, stream: str = "synthesis") -> LatentSet:
    """A method's training set: the image folder `images` encoded (captions from the folder, else
    prompts[0]), or else `config.num_images` latents synthesized by the pipeline for `prompts` with
    the config's synthesis settings (a SynthesisConfig's fields)."""
    resolution = data_resolution(pipeline, config)
    cache_dir = config.cache_dir or default_cache_dir()
    if images:
        return encode_image_folder(pipeline, images, prompts[0], resolution=resolution,
                                   batch_size=config.synthesis_batch_size, model_key=model_key, cache_dir=cache_dir,
                                   show_progress=show_progress)
    return synthesize_latents(pipeline, prompts, config.num_images, seed=config.seed,
                              num_inference_steps=config.synthesis_steps, scheduler=config.synthesis_scheduler,
                              guidance_scale=config.synthesis_guidance_scale, resolution=resolution,
                              batch_size=config.synthesis_batch_size, model_key=model_key, cache_dir=cache_dir,
                              autocast=accelerator.autocast, show_progress=show_progress, stream=stream)


def ddim_trajectory(predict, scheduler, latents, cond, uncond, guidance_scale: float, stop: int, keep_all: bool = False):
    """Run `stop` guided DDIM steps from `latents`; the latent reached (or all latents before each step)."""
    visited = []
    with torch.no_grad():
        for t in scheduler.timesteps[:stop]:
            visited.append(latents)
            batch = latents.shape[0]
            timesteps = t.repeat(2 * batch).to(latents.device)
            conditional, unconditional = predict(torch.cat([latents, latents]), timesteps,
                                                 torch.cat([cond, uncond])).chunk(2)
            guided = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(guided.float(), t, latents).prev_sample
    return torch.stack(visited, 1) if keep_all else latents


def base_trajectories(pipeline, prompts: list[str], num_images: int, *, seed: int, steps: int, guidance_scale: float,
                      batch_size: int, scheduler, embeddings: dict, latent_shape, session, cache_dir: str | None = None,
                      stream: str = "esd-trajectory") -> tuple[torch.Tensor, list[str]]:
    """`num_images` full guided DDIM trajectories of the frozen base model, cycling through `prompts`:
    (N, steps, C, h, w), cached on disk, and the prompt of each. The partial trajectories ESD and
    AdvUnlearn train on, sampled once: a point of them is the latent reached after a stop index."""
    key = dict(model=session.model_key, prompts=prompts, num_images=num_images, seed=seed, steps=steps,
               guidance_scale=guidance_scale, shape=list(latent_shape), batch_size=batch_size,
               **({"stream": stream} if stream != "esd-trajectory" else {}))  # keys of existing caches stay valid
    folder = cache_folder(cache_dir or default_cache_dir(), "esd-trajectories", key)
    device = session.accelerator.device
    captions = [prompts[i % len(prompts)] for i in range(num_images)]
    batches = [list(range(i, min(i + batch_size, num_images))) for i in range(0, num_images, batch_size)]

    def sample(index, batch):
        noise = torch.stack([torch.randn(latent_shape, generator=seeded_generator(seed, stream, i))
                             for i in batch]).to(device)
        cond = torch.stack([embeddings[captions[i]] for i in batch])
        with session.accelerator.autocast():
            return ddim_trajectory(lambda *a: pipeline.unet(*a).sample, scheduler, noise * scheduler.init_noise_sigma,
                                   cond, embeddings[""].expand_as(cond), guidance_scale, steps, keep_all=True)

    with session.accelerator.main_process_first():
        return cached_batches(folder, batches, sample, f"sampling base trajectories of {prompts[0]!r}",
                              session.show_progress), captions


def read_image_folder(folder: str, default_prompt: str) -> tuple[list[str], list[str]]:
    """Image files of `folder` and their captions.

    Captions come from `metadata.jsonl` (`file_name` + `text`, the 🤗 imagefolder layout), else a
    `.txt` file beside each image, else `default_prompt`.
    """
    if not os.path.isdir(folder):
        raise EraseError(f"image folder {folder} does not exist: give a folder of images (optional captions in metadata.jsonl)")
    captions = {}
    metadata = os.path.join(folder, "metadata.jsonl")
    if os.path.isfile(metadata):
        with open(metadata) as f:
            for line in filter(str.strip, f):
                row = json.loads(line)
                captions[row["file_name"]] = row.get("text") or default_prompt
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise EraseError(f"image folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}): add some or use prompts instead")
    prompts = []
    for file in files:
        sidecar = os.path.join(folder, os.path.splitext(file)[0] + ".txt")
        if file in captions:
            prompts.append(captions[file])
        elif os.path.isfile(sidecar):
            with open(sidecar) as f:
                prompts.append(f.read().strip() or default_prompt)
        else:
            prompts.append(default_prompt)
    return [os.path.join(folder, f) for f in files], prompts


def _load_image(path: str, resolution: int) -> torch.Tensor:
    """Resize the short side to `resolution`, center-crop, scale to [-1, 1] (the VAE's input range)."""
    image = Image.open(path).convert("RGB")
    scale = resolution / min(image.size)
    image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


@torch.no_grad()
def encode_image_folder(pipeline, folder: str, default_prompt: str, *, resolution: int, batch_size: int,
                        model_key: str, cache_dir: str | None = None, show_progress: bool = True) -> LatentSet:
    """VAE latents (distribution mean, times the scaling factor) of every image in `folder`."""
    files, prompts = read_image_folder(folder, default_prompt)
    stamps = [(os.path.basename(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]
    key = dict(model=model_key, folder=os.path.abspath(folder), files=stamps, resolution=resolution, batch_size=batch_size)
    cache = cache_folder(cache_dir or default_cache_dir(), "encoded", key)
    vae = pipeline.vae

    def encode(index, batch_files):
        pixels = torch.stack([_load_image(f, resolution) for f in batch_files]).to(vae.device, vae.dtype)
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    latents = cached_batches(cache, batches, encode, f"encoding {folder}", show_progress)
    return LatentSet(latents, prompts)
