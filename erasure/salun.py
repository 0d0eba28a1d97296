"""SalUn: saliency-masked unlearning for Stable Diffusion (Fan et al., ICLR 2024).

1. Saliency: sum ∇θ of the forget loss MSE(ε, (1+w)·ε_θ(z_t,t,c_f) − w·ε_θ(z_t,t,∅)) over the forget
   set, keep the top `mask_ratio` of |G| (global ranking) inside the parameter `scope`.
2. Unlearning: L = MSE(ε_θ(z_t,t,c_f), stopgrad ε_θ(z_t,t,c')) + α·MSE on the retain set, with
   the gradients multiplied by the mask. Adam without weight decay then leaves every
   non-salient weight bit-identical: its moments stay zero where the gradient always is.

Defaults follow the official code (OPTML-Group/Unlearn-Saliency, SD/): w = 7.5, ratio 0.5,
Adam lr 1e-5, batch 8, 100 steps (one epoch of 800 images), α = 0.1 for nudity, 0.5 class-wise.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, ClassVar

import torch
from diffusers import DDPMScheduler
from torch.func import functional_call
from tqdm.auto import tqdm

from .data import LatentSet, default_cache_dir, encode_image_folder, read_image_folder, synthesize_latents
from .diffusion import (encode_prompts, epoch_indices, per_sample_mse, prediction_target, seeded_generator,
                        stack_embeddings)
from .errors import EraseError, TrainingDiverged
from .model_io import BaseModel, OutputFolder, load_pipeline, resolve_model, save_stock_pipeline, weights_fingerprint
from .prompts import ConceptPrompts, check_concept, concept_prompts
from .saliency import SCOPES, full_mask, in_scope, load_mask, mask_densities, saliency_mask_from_scores, save_mask
from .training import PhaseTimer, checkpoint_step, checkpoints, library_versions, make_accelerator, save_checkpoint

RETAIN_LOSS_WEIGHT = {"nudity": 0.1, "class-wise": 0.5}


# The official code's settings, used where a field is None and the base model recommends nothing.
OFFICIAL_DEFAULTS = dict(scope="full", learning_rate=1e-5, misaligned_target="current", synthesis_steps=50,
                         synthesis_batch_size=8)
MISALIGNED_TARGETS = ("current", "base")


@dataclass
class SalUnConfig:
    """Everything an erase depends on.

    Empty prompt lists mean "the defaults for this concept" (erasure.prompts). Fields left None
    take the base model's recommended value (the bundled shapes model has its own, see
    evaluation.shapes.SALUN_DEFAULTS), else the official SalUn code's (OFFICIAL_DEFAULTS,
    RETAIN_LOSS_WEIGHT).
    """

    method: ClassVar[str] = "salun"

    model: str
    concept: str
    output_dir: str | None = None
    revision: str | None = None
    # data
    forget_prompts: list[str] = field(default_factory=list)
    retain_prompts: list[str] = field(default_factory=list)
    misaligned_prompts: list[str] = field(default_factory=list)
    forget_images: str | None = None
    retain_images: str | None = None
    num_images: int = 800
    synthesis_steps: int | None = None
    synthesis_guidance_scale: float = 7.5
    synthesis_batch_size: int | None = None
    resolution: int | None = None
    # saliency
    mask_ratio: float = 0.5
    scope: str | None = None
    saliency_guidance_scale: float = 7.5
    # unlearning
    steps: int = 100
    batch_size: int = 8
    learning_rate: float | None = None
    retain_loss_weight: float | None = None
    # whose prediction for the misaligned prompt is the forget target: "current" model (official code) or frozen "base"
    misaligned_target: str | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    seed: int = 0
    # run control
    checkpointing_steps: int = 0
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    report_to: str | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    cache_dir: str | None = None

    def check(self) -> None:
        """Reject impossible settings with one line that says what to do instead."""
        check_concept(self.concept)
        if not 0 < self.mask_ratio <= 1:
            raise EraseError(f"mask ratio {self.mask_ratio} is outside (0, 1]: use e.g. 0.5 to update the most salient half")
        if self.scope is not None and self.scope not in SCOPES:
            raise EraseError(f"unknown scope {self.scope!r}: choose one of {', '.join(SCOPES)}")
        if self.misaligned_target is not None and self.misaligned_target not in MISALIGNED_TARGETS:
            raise EraseError(f"unknown misaligned target {self.misaligned_target!r}: choose current or base")
        for name in ("num_images", "steps", "batch_size", "synthesis_steps", "synthesis_batch_size",
                     "gradient_accumulation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EraseError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise EraseError(f"learning rate must be positive, got {self.learning_rate}")
        if self.checkpointing_steps < 0:
            raise EraseError("--checkpointing-steps must be 0 (off) or a positive step interval")
        if self.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(self.resume_from_checkpoint):
            raise EraseError(f"checkpoint {self.resume_from_checkpoint} does not exist: pass 'latest' or a checkpoint-N folder")

    def with_defaults(self, prompts: ConceptPrompts, recommended: dict | None = None) -> "SalUnConfig":
        """A copy with every None field filled: the model's recommended value, else the official one."""
        defaults = {**OFFICIAL_DEFAULTS, "retain_loss_weight": RETAIN_LOSS_WEIGHT[prompts.preset], **(recommended or {})}
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def settings(self) -> dict:
        """The settings that determine the result (not where it goes or how the run is driven)."""
        run_control = {"output_dir", "resume_from_checkpoint", "overwrite", "report_to", "cache_dir",
                       "checkpointing_steps", "checkpoints_total_limit"}
        return {k: v for k, v in asdict(self).items() if k not in run_control}


@dataclass
class EraseResult:
    output_dir: str | None
    saliency_mask: dict[str, torch.Tensor]
    record: dict


def _noise_batch(generator_keys, latents_shape, num_train_timesteps):
    """Timesteps and noise, one generator per sample so batching and sharding do not change them."""
    timesteps, noise = [], []
    for keys in generator_keys:
        g = seeded_generator(*keys)
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=g))
        noise.append(torch.randn(latents_shape, generator=g))
    return torch.cat(timesteps), torch.stack(noise)


def compute_saliency(pipeline, forget: LatentSet, config: SalUnConfig, accelerator, show_progress=True):
    """The saliency mask over all UNet parameters (False outside the scope), and its overall density."""
    unet, device = pipeline.unet, accelerator.device
    scoped = {n: p for n, p in unet.named_parameters() if in_scope(n, config.scope)}
    for name, param in unet.named_parameters():
        param.requires_grad_(name in scoped)
        param.grad = None
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    embeddings = encode_prompts(pipeline, forget.prompts + [""], device)
    w = config.saliency_guidance_scale
    # each process takes every k-th sample; the gradient sums are added up across processes below
    shard = list(range(accelerator.process_index, len(forget), accelerator.num_processes))
    batches = [shard[i:i + config.batch_size] for i in range(0, len(shard), config.batch_size)]
    for batch in tqdm(batches, desc="saliency", disable=not (show_progress and accelerator.is_main_process)):
        latents = forget.latents[batch].to(device)
        timesteps, noise = _noise_batch([(config.seed, "saliency", i) for i in batch], latents.shape[1:],
                                        noise_scheduler.config.num_train_timesteps)
        timesteps, noise = timesteps.to(device), noise.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        cond = stack_embeddings(embeddings, [forget.prompts[i] for i in batch])
        uncond = embeddings[""].expand_as(cond)
        with accelerator.autocast():
            prediction = unet(torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]),
                              torch.cat([cond, uncond])).sample
        conditional, unconditional = prediction.float().chunk(2)
        guided = (1 + w) * conditional - w * unconditional
        # The official code minimises the negated loss; the sign does not change |G|.
        loss = per_sample_mse(guided, prediction_target(noise_scheduler, latents, noise, timesteps)).sum()
        (loss / config.batch_size).backward()
    gradients = {n: p.grad if accelerator.num_processes == 1 else accelerator.reduce(p.grad, "sum")
                 for n, p in scoped.items()}
    scope_masks = saliency_mask_from_scores(gradients, config.mask_ratio)
    for param in unet.parameters():
        param.grad = None
    return full_mask([(n, p.shape) for n, p in unet.named_parameters()], scope_masks)


def unlearn(pipeline, forget: LatentSet, retain: LatentSet, saliency_mask, prompts: ConceptPrompts,
            config: SalUnConfig, accelerator, checkpoint_dir: str | None = None,
            step_callback: Callable[[int, dict], None] | None = None, show_progress=True) -> dict:
    """Masked fine-tuning of pipeline.unet in place; returns the last step's losses."""
    unet, device = pipeline.unet, accelerator.device
    alpha = config.retain_loss_weight
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    misaligned = [prompts.misaligned[i % len(prompts.misaligned)] for i in range(len(forget))]
    embeddings = encode_prompts(pipeline, forget.prompts + retain.prompts + misaligned, device)
    pipeline.text_encoder.to("cpu")  # frozen and no longer needed: keep accelerator memory for training
    pipeline.vae.to("cpu")

    # Only parameters with a salient entry train: the rest get no gradient, no optimizer state.
    trainable = {n: p for n, p in unet.named_parameters() if saliency_mask[n].any()}
    # A frozen target needs the base values of the trained tensors only (taken before a resume loads a checkpoint).
    base_values = ({n: p.detach().clone() for n, p in trainable.items()}
                   if config.misaligned_target == "base" else None)
    for name, param in unet.named_parameters():
        param.requires_grad_(name in trainable)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.Adam(trainable.values(), lr=config.learning_rate, weight_decay=0.0)
    model, optimizer = accelerator.prepare(unet, optimizer)
    masks = [(param, saliency_mask[name].to(device)) for name, param in trainable.items()]

    start = 0
    if config.resume_from_checkpoint and checkpoint_dir:
        found = (checkpoints(checkpoint_dir)[-1:] if config.resume_from_checkpoint == "latest"
                 else [config.resume_from_checkpoint])
        if found:
            accelerator.load_state(found[0])
            start = checkpoint_step(found[0])
            accelerator.print(f"resuming from {found[0]} (step {start})")
        else:
            accelerator.print("no checkpoint to resume from: starting at step 0")

    per_process, processes = config.batch_size, accelerator.num_processes
    global_batch = per_process * processes
    rows = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)
    T = noise_scheduler.config.num_train_timesteps
    logs = {}
    progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="unlearning",
                    disable=not (show_progress and accelerator.is_main_process))
    for step in progress:
        for micro in range(config.gradient_accumulation_steps):
            # the global batch of this (step, micro) is the same whatever the number of processes
            draw = step * config.gradient_accumulation_steps + micro
            forget_ids = epoch_indices(len(forget), global_batch, draw * global_batch, config.seed, "forget")[rows]
            retain_ids = epoch_indices(len(retain), global_batch, draw * global_batch, config.seed, "retain")[rows]
            keys = [(config.seed, "unlearn", draw, j) for j in range(global_batch)][rows]
            t_forget, noise_forget = _noise_batch([k + ("forget",) for k in keys], forget.latents.shape[1:], T)
            t_retain, noise_retain = _noise_batch([k + ("retain",) for k in keys], retain.latents.shape[1:], T)
            forget_latents, retain_latents = forget.latents[forget_ids].to(device), retain.latents[retain_ids].to(device)
            t_forget, noise_forget = t_forget.to(device), noise_forget.to(device)
            t_retain, noise_retain = t_retain.to(device), noise_retain.to(device)
            noisy_forget = noise_scheduler.add_noise(forget_latents, noise_forget, t_forget)
            noisy_retain = noise_scheduler.add_noise(retain_latents, noise_retain, t_retain)
            forget_emb = stack_embeddings(embeddings, [forget.prompts[i] for i in forget_ids])
            misaligned_emb = stack_embeddings(embeddings, [misaligned[i] for i in forget_ids])
            retain_emb = stack_embeddings(embeddings, [retain.prompts[i] for i in retain_ids])
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    with torch.no_grad():
                        inputs = (noisy_forget, t_forget, misaligned_emb)
                        target = (functional_call(accelerator.unwrap_model(model), base_values, inputs) if base_values
                                  else accelerator.unwrap_model(model)(*inputs)).sample
                    # forget and retain branches in one forward: GroupNorm is per sample, so this is exact
                    prediction = model(torch.cat([noisy_forget, noisy_retain]), torch.cat([t_forget, t_retain]),
                                       torch.cat([forget_emb, retain_emb])).sample
                forget_pred, retain_pred = prediction.chunk(2)
                forget_loss = per_sample_mse(forget_pred, target).mean()
                retain_loss = per_sample_mse(
                    retain_pred, prediction_target(noise_scheduler, retain_latents, noise_retain, t_retain)).mean()
                loss = forget_loss + alpha * retain_loss
                if not torch.isfinite(loss):
                    where = f"; the last checkpoint is in {checkpoint_dir}" if checkpoint_dir and checkpoints(checkpoint_dir) else ""
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {step + 1}: lower --learning-rate or use --mixed-precision no{where}")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    for param, mask in masks:
                        param.grad.mul_(mask)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        logs = {"loss": loss.item(), "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()}
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        accelerator.log(logs, step=step + 1)
        if checkpoint_dir and config.checkpointing_steps and (step + 1) % config.checkpointing_steps == 0:
            save_checkpoint(accelerator, checkpoint_dir, step + 1, config.checkpoints_total_limit)
        if step_callback:
            step_callback(step + 1, logs)
    # Undo what prepare() added (the mixed-precision forward wrapper) so inference runs as before.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    unet.eval()
    for param in unet.parameters():
        param.requires_grad_(False)
    accelerator.free_memory()
    return logs


def build_sets(pipeline, config: SalUnConfig, prompts: ConceptPrompts, accelerator, model_key: str,
               show_progress=True) -> tuple[LatentSet, LatentSet]:
    """The forget and retain latents: encoded image folders, or synthesized by the pipeline itself."""
    resolution = config.resolution or pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    pipeline.to(accelerator.device)
    cache_dir = config.cache_dir or default_cache_dir()
    sets = []
    with accelerator.main_process_first():  # the main process fills the cache; the others read it
        for images, texts, name in ((config.forget_images, prompts.forget, "forget"),
                                    (config.retain_images, prompts.retain, "retain")):
            if images:
                sets.append(encode_image_folder(pipeline, images, texts[0], resolution=resolution,
                                                batch_size=config.synthesis_batch_size, model_key=model_key,
                                                cache_dir=cache_dir, show_progress=show_progress))
            else:
                sets.append(synthesize_latents(
                    pipeline, texts, config.num_images, seed=config.seed, num_inference_steps=config.synthesis_steps,
                    guidance_scale=config.synthesis_guidance_scale, resolution=resolution,
                    batch_size=config.synthesis_batch_size, model_key=model_key, cache_dir=cache_dir,
                    autocast=accelerator.autocast, show_progress=show_progress))
    return sets[0], sets[1]


def erase_pipeline(pipeline, config: SalUnConfig, accelerator=None, step_callback=None, show_progress=True):
    """Erase in memory: data, saliency, masked unlearning on `pipeline.unet`. Returns the mask and the record."""
    config.check()
    base = BaseModel(pipeline.name_or_path or "", pipeline.name_or_path or "")  # the model's world, if any
    prompts = concept_prompts(config.concept, config.forget_prompts, config.retain_prompts, config.misaligned_prompts,
                              world=base.world)
    config = config.with_defaults(prompts, base.salun_defaults)
    accelerator = accelerator or make_accelerator(config.mixed_precision, config.gradient_accumulation_steps)
    timer = PhaseTimer(accelerator.device)
    with timer.phase("data"):
        forget, retain = build_sets(pipeline, config, prompts, accelerator, weights_fingerprint(pipeline), show_progress)
    with timer.phase("saliency"):
        mask = compute_saliency(pipeline, forget, config, accelerator, show_progress)
    with timer.phase("unlearning"):
        logs = unlearn(pipeline, forget, retain, mask, prompts, config, accelerator,
                       step_callback=step_callback, show_progress=show_progress)
    pipeline.to(accelerator.device)  # unlearn() parked the text encoder and VAE on the CPU; inference needs them back
    return mask, _record(config, prompts, mask, timer, logs, len(forget), len(retain))


def _record(config, prompts, mask, timer, logs, forget_size, retain_size, base=None, resumed_from=0) -> dict:
    density, per_layer = mask_densities(mask)
    return {
        "method": config.method,
        "concept": config.concept,
        "prompts": {"forget": prompts.forget, "retain": prompts.retain, "misaligned": prompts.misaligned,
                    "preset": prompts.preset},
        "base_model": {"id": base.name if base else config.model, "revision": base.revision if base else None},
        "hyperparameters": config.settings(),
        "seed": config.seed,
        "steps": config.steps,
        "resumed_from_step": resumed_from,
        "data": {"forget_size": forget_size, "retain_size": retain_size},
        "final_losses": logs,
        "mask": {"ratio": config.mask_ratio, "scope": config.scope, "density": density, "layer_density": per_layer},
        **timer.report(),
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run(config: SalUnConfig, step_callback=None, show_progress=True) -> EraseResult:
    """The full job behind `sd-erase erase`: checks, data, saliency, unlearning, and the output folder."""
    config.check()
    if not config.output_dir:
        raise EraseError("--output is missing: name the folder to write the erased pipeline to")
    base = resolve_model(config.model, config.revision, config.allow_pickle)
    prompts = concept_prompts(config.concept, config.forget_prompts, config.retain_prompts, config.misaligned_prompts,
                              world=base.world)
    config = config.with_defaults(prompts, base.salun_defaults)
    output = OutputFolder(config.output_dir, config.overwrite, resume=config.resume_from_checkpoint is not None)
    output.check()
    for folder, texts in ((config.forget_images, prompts.forget), (config.retain_images, prompts.retain)):
        if folder:
            read_image_folder(folder, texts[0])  # fail on a bad folder before any work
    pipeline = load_pipeline(base, config.allow_pickle)
    accelerator = make_accelerator(config.mixed_precision, config.gradient_accumulation_steps,
                                   output.partial, config.report_to)
    if accelerator.is_main_process:
        output.begin()
    accelerator.wait_for_everyone()
    _check_same_settings(os.path.join(output.partial, "erase-settings.json"), config, accelerator)
    if config.report_to:
        accelerator.init_trackers("sd-erase", config={k: str(v) for k, v in config.settings().items()})

    timer = PhaseTimer(accelerator.device)
    with timer.phase("data"):
        forget, retain = build_sets(pipeline, config, prompts, accelerator, weights_fingerprint(pipeline), show_progress)
    mask_file = os.path.join(output.partial, "saliency_mask.safetensors")
    with timer.phase("saliency"):
        if os.path.isfile(mask_file):  # an interrupted run already computed it
            mask = load_mask(mask_file)
        else:
            mask = compute_saliency(pipeline, forget, config, accelerator, show_progress)
            if accelerator.is_main_process:
                save_mask(mask, mask_file + ".tmp", concept=config.concept, ratio=config.mask_ratio, scope=config.scope)
                os.replace(mask_file + ".tmp", mask_file)
    existing = checkpoints(output.partial)
    resumed_from = checkpoint_step(existing[-1]) if config.resume_from_checkpoint and existing else 0
    with timer.phase("unlearning"):
        logs = unlearn(pipeline, forget, retain, mask, prompts, config, accelerator, checkpoint_dir=output.partial,
                       step_callback=step_callback, show_progress=show_progress)
    accelerator.wait_for_everyone()
    record = None
    if accelerator.is_main_process:
        with timer.phase("save"):
            save_stock_pipeline(pipeline, output.partial, tokenizer_source=base.path)
        record = _record(config, prompts, mask, timer, logs, len(forget), len(retain), base, resumed_from)
        with open(os.path.join(output.partial, "erasure.json"), "w") as f:
            json.dump(record, f, indent=2)
        for folder in checkpoints(output.partial):  # only needed to resume this run, and large
            shutil.rmtree(folder)
        os.remove(os.path.join(output.partial, "erase-settings.json"))
        output.commit()
        accelerator.print(f"erased {config.concept!r}: {output.path}")
    accelerator.end_training()
    return EraseResult(output.path, mask, record)


def _check_same_settings(path: str, config: SalUnConfig, accelerator) -> None:
    """A resumed run must continue with the settings it started with."""
    settings = json.loads(json.dumps(config.settings()))
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise EraseError(f"the interrupted run in {os.path.dirname(path)} used other settings ({', '.join(changed)}): "
                             "rerun with the same flags, or pass --overwrite to start again")
    elif accelerator.is_main_process:
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)
