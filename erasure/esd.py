"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

The UNet is fine-tuned so that its prediction for the concept c becomes the frozen model's
prediction pushed away from c by negative guidance:

    L = MSE(ε_θ(z_t, t, c), ε*(z_t, t, ∅) − η·(ε*(z_t, t, c) − ε*(z_t, t, ∅)))

z_t comes from a partial DDIM trajectory of c (guidance 3): each step draws a stop index of the
50-step schedule and t is the timestep the latent is at. With `--erase-from Y` the model keeps
drawing Y without the attribute c: z_t is sampled from Y, the model is queried with Y, and the
target is ε*(Y) − η·(ε*(c) − ε*(∅)).

Defaults follow the paper code (rohitgandikota/erasing, train-esd.py): Adam lr 1e-5, 1000
steps at batch 1, η = 1, trajectories sampled by the model being trained (`sample_from current`),
ESD-u as its `noxattn` (norm layers trained; time embedding and output layers not). The authors'
current diffusers code (esd_sd.py) trains Linear/Conv2d layers only and includes the time
embedding and conv_out in ESD-u: `train_method u-current`. The timestep convention (a stop index
of the 50-step schedule, t the timestep the latent is at) is the current code's.
`sample_from base` samples with the frozen base model instead (as the authors' diffusers
rewrite does); its trajectories do not change during training, so `num_images` of them are
sampled once, cached, and every step draws a point from them: a step then costs one forward
and backward pass instead of up to 50 sampling steps; `num_images` 64 in batches of 8 is this
project's choice there (the paper has no such pool). The config imports no torch; the training
code imports it where the work starts. SPM (erasure/spm.py) trains by the same objective
(`train_negative_guidance`), adding its latent anchoring.
"""

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from .config import TrajectoryConfig, option
from .errors import EraseError

CITATION = """@inproceedings{gandikota2023erasing,
  title     = {Erasing Concepts from Diffusion Models},
  author    = {Gandikota, Rohit and Materzy{\'n}ska, Joanna and Fiotto-Kaufman, Jaden and Bau, David},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision},
  year      = {2023}
}"""
TRAIN_METHODS = {
    "u": "every layer but cross-attention, the time embedding and the output layers (global concepts such as nudity)",
    "u-current": "every Linear and Conv2d layer but cross-attention, the time embedding and conv_out included, no norms",
    "x": "cross-attention (attn2) only (styles, named people)",
    "x-strict": "the cross-attention key and value projections (attn2 to_k, to_v) only",
    "all": "every UNet parameter",
}
DATA = "forget and retain data"


def trains(name: str, train_method: str) -> bool:
    """Whether ESD-`train_method` fine-tunes the UNet parameter `name` (diffusers names)."""
    if train_method == "all":
        return True
    if train_method == "x":
        return "attn2" in name
    if train_method == "x-strict":
        return "attn2.to_k" in name or "attn2.to_v" in name
    if train_method == "u":  # the paper's "noxattn": CompVis time_embed and out. are diffusers' names below
        return not ("attn2" in name or name.startswith(("time_embedding", "conv_norm_out", "conv_out")))
    raise EraseError(f"unknown ESD train method {train_method!r}: choose one of {', '.join(TRAIN_METHODS)}")


def trained_parameters(unet, train_method: str) -> list[str]:
    """The UNet parameters ESD-`train_method` fine-tunes. `u-current` is decided by layer type (the
    authors' diffusers code trains Linear and Conv2d layers only), the others by name."""
    if train_method != "u-current":
        return [n for n, _ in unet.named_parameters() if trains(n, train_method)]
    import torch

    return [f"{module_name}.{name}" for module_name, module in unet.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and "attn2" not in module_name
            for name, _ in module.named_parameters(recurse=False)]


@dataclass
class NegativeGuidanceConfig(TrajectoryConfig):
    """Fields of the methods trained by ESD's objective (ESD; SPM adds its latent anchoring)."""

    ERASED_FIELDS: ClassVar[tuple[str, ...]] = ("forget_prompts",)  # several concepts: one sampled per step

    batch_size: int = option(1, help="samples per step and device", group="training")
    forget_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--forget-prompt", metavar="TEXT",
        help="prompt of the concept c (repeatable); default: the model profile's, else the concept itself")
    negative_guidance: float | None = option(None, official=1.0, group="negative guidance",
                                             help="eta, how far the concept is pushed away")
    sample_from: Literal["current", "base"] | None = option(
        None, official="current", group="negative guidance",
        help="model whose DDIM trajectories give the training latents: current (paper code: resampled each step) "
             "or base (frozen model, sampled once and cached: much faster)")
    num_images: int | None = option(None, official=64, group=DATA,
                                    help="trajectories sampled up front with --sample-from base")

    def check(self) -> None:
        super().check()
        if not all(p.strip() for p in self.forget_prompts):
            raise EraseError("`forget_prompts` has an empty prompt: give the prompt text, or leave it out for the "
                             "concept itself")
        self.require_positive("num_images")

    def concept_defaults(self) -> dict:
        return {"forget_prompts": [self.concept.strip()]}

    def neutral_prompt(self, k: int) -> str:
        """The prompt forget prompt k is pushed away from (ESD: the empty prompt)."""
        return ""

    @property
    def source_prompt(self) -> str | None:
        """The prompt the concept is erased from as an attribute (ESD's `erase_from`), or None."""
        return None

    def check_with_pipeline(self, pipeline) -> None:
        from .diffusion import check_prompt_lengths

        neutral = [self.neutral_prompt(k) for k in range(len(self.forget_prompts))]
        check_prompt_lengths(pipeline.tokenizer, self.forget_prompts + neutral + [self.source_prompt or ""],
                             f"{self.method.upper()} prompt")


@dataclass
class EsdConfig(NegativeGuidanceConfig):
    """ESD's settings; each field's help says where its default comes from."""

    steps: int = option(1000, help="optimizer steps", group="training")
    erase_from: str | None = option(None, group="negative guidance", metavar="TEXT",
                                    help="erase the concept as an attribute of this prompt (e.g. --concept red "
                                         "--erase-from 'a car')")
    train_method: Literal["u", "u-current", "x", "x-strict", "all"] | None = option(
        None, official="u", group="negative guidance",
        help="ESD-u: all but cross-attention, time embedding and output layers, norms included (paper code; nudity, "
             "objects); u-current: the same as the authors' current diffusers code has it (Linear/Conv2d layers only, "
             "time embedding and conv_out included); x: cross-attention (styles, people); x-strict: attn2 to_k/to_v; all")

    def check(self) -> None:
        super().check()
        if self.erase_from is not None and not self.erase_from.strip():
            raise EraseError("`erase_from` is empty: name what should stay (e.g. 'a car' when erasing 'red'), "
                             "or leave it out")

    @property
    def source_prompt(self) -> str | None:
        return self.erase_from

    def narrower(self):
        return replace(self, train_method="x") if self.train_method in ("u", "u-current", "all") else None


def erase_pipeline(pipeline, config: EsdConfig, session) -> tuple[dict, dict]:
    trainable = trained_parameters(pipeline.unet, config.train_method)
    return train_negative_guidance(pipeline, config, session, trainable, {"train_method": config.train_method},
                                   f"ESD-{config.train_method}: {TRAIN_METHODS[config.train_method]}")


def train_negative_guidance(pipeline, config: NegativeGuidanceConfig, session, trainable: list[str], scope: dict,
                            scope_text: str, regularizer=None) -> tuple[dict, dict]:
    """Train the UNet weights `trainable` (or a LoRA on their layers) by ESD's objective; `scope` and
    `scope_text` say in erasure.json which they are. `regularizer(model, frozen, z, t, concept, keys)`,
    given the step's latents, timesteps, concept embeddings and one (draw, row) key per sample,
    returns a term added to the loss and its logs (SPM's latent anchoring)."""
    import torch
    from diffusers import DDIMScheduler

    from .data import base_trajectories, data_resolution, ddim_trajectory
    from .diffusion import encode_prompts, per_sample_mse, seeded_generator, stack_embeddings
    from .lora_training import TrainedWeights
    from .training import fit

    accelerator, timer = session.accelerator, session.timer
    device = accelerator.device
    unet = pipeline.unet
    pipeline.to(device)
    resolution = data_resolution(pipeline, config)
    latent_shape = (unet.config.in_channels, resolution // pipeline.vae_scale_factor, resolution // pipeline.vae_scale_factor)
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(config.synthesis_steps, device=device)
    source = config.source_prompt  # with ESD's --erase-from, latents and the trained prediction are of Y
    # the prompt each concept prompt is pushed away from: ESD's empty prompt, or SPM's neutral prompts
    neutral = {p: config.neutral_prompt(k) for k, p in enumerate(config.forget_prompts)}
    embeddings = encode_prompts(pipeline, config.forget_prompts + [source or "", ""] + list(neutral.values()), device)
    pool_source = [source] if source else config.forget_prompts
    with timer.phase("data"):
        pool, pool_prompts = (base_trajectories(pipeline, pool_source, config.num_images, seed=config.seed,
                                                steps=config.synthesis_steps,
                                                guidance_scale=config.synthesis_guidance_scale,
                                                batch_size=config.synthesis_batch_size, scheduler=scheduler,
                                                embeddings=embeddings, latent_shape=latent_shape, session=session,
                                                cache_dir=config.cache_dir)
                              if config.sample_from == "base" else (None, None))
    pipeline.text_encoder.to("cpu")  # frozen and no longer needed: keep accelerator memory for training
    pipeline.vae.to("cpu")

    trained = TrainedWeights(pipeline, "unet", trainable, config, config.gradient_checkpointing, frozen_base=True)
    # torch's fused kernel: fewer launches (reference H100 SD-1.5 step: fused 0.134 s vs foreach 0.154 s)
    optimizer = torch.optim.Adam(trained.parameters, lr=config.learning_rate,
                                 fused=accelerator.device.type in ("cuda", "cpu"))
    model, optimizer = accelerator.prepare(unet, optimizer)
    eta = config.negative_guidance
    per_process = config.batch_size  # every process draws the same global batch and takes its rows
    rows = range(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)

    def frozen(*inputs):
        return trained.base_output(accelerator.unwrap_model(model), *inputs).sample

    def point(draw: int, j: int):
        """The j-th latent of this step's global batch, its timestep, the concept prompt and Y (or c)."""
        g = seeded_generator(config.seed, "esd", draw, j)
        stop = int(torch.randint(0, config.synthesis_steps, (1,), generator=g))
        if pool is not None:
            k = int(torch.randint(0, len(pool), (1,), generator=g))
            concept = config.forget_prompts[k % len(config.forget_prompts)]
            return pool[k, stop].to(device), scheduler.timesteps[stop], concept, source or pool_prompts[k]
        concept = config.forget_prompts[int(torch.randint(0, len(config.forget_prompts), (1,), generator=g))]
        start = torch.randn(latent_shape, generator=g).to(device)[None] * scheduler.init_noise_sigma
        cond = embeddings[source or concept][None]
        with accelerator.autocast():  # the paper samples with the model being trained
            z = ddim_trajectory(lambda *a: accelerator.unwrap_model(model)(*a).sample, scheduler, start, cond,
                                embeddings[""][None], config.synthesis_guidance_scale, stop)
        return z[0], scheduler.timesteps[stop], concept, source or concept

    def compute_loss(step, micro):
        draw = step * config.gradient_accumulation_steps + micro
        points = [point(draw, j) for j in rows]
        z = torch.stack([p[0] for p in points])
        t = torch.stack([p[1] for p in points]).to(device)
        concept = stack_embeddings(embeddings, [p[2] for p in points])
        trained_prompt = stack_embeddings(embeddings, [p[3] for p in points])
        neutral_prompt = stack_embeddings(embeddings, [neutral[p[2]] for p in points])
        conditions = [neutral_prompt, concept] + ([trained_prompt] if source else [])  # Y's only with --erase-from
        with accelerator.autocast():
            with torch.no_grad():
                frozen_predictions = frozen(torch.cat([z] * len(conditions)), torch.cat([t] * len(conditions)),
                                            torch.cat(conditions)).float().chunk(len(conditions))
                e_neutral, e_concept = frozen_predictions[:2]
                e_source = frozen_predictions[2] if source else e_concept
                target = e_source - eta * (e_concept - e_neutral)
            prediction = model(z, t, trained_prompt).sample
        loss = per_sample_mse(prediction, target).mean()
        if regularizer is None:
            return loss, {"loss": loss.item()}
        with accelerator.autocast():
            extra, extra_logs = regularizer(model, frozen, z, t, concept, [(draw, j) for j in rows])
        return loss + extra, {"loss": (loss + extra).item(), "erase_loss": loss.item(), **extra_logs}

    with timer.phase("training"):
        logs, resumed_from = fit(
            accelerator, model, optimizer, compute_loss, config, checkpoint_dir=session.work_dir,
            step_callback=session.step_callback, show_progress=session.show_progress, description=config.method.upper())
    trained.finish()
    pipeline.to(device)
    share = trained.scope_share
    sampling = (f"{config.num_images} trajectories of the frozen base model, sampled once" if pool is not None
                else "trajectories of the model being trained, sampled every step")
    record = {
        "prompts": {"forget": config.forget_prompts, **({"erase_from": [source]} if source else {}),
                    **({"misaligned": list(neutral.values())} if any(neutral.values()) else {})},
        "steps": config.steps,
        "resumed_from_step": resumed_from,
        "final_losses": logs,
        "trained_parameters": {**scope, "tensors": len(trainable), "share": share},
        "summary": [
            ["trained parameters", f"{scope_text}; {len(trainable)} tensors, {share:.1%} of the UNet weights"],
            ["objective", f"negative guidance η = {eta}" + (f", erasing it from '{source}'" if source else "")
                          + (", away from each forget prompt's neutral prompt" if any(neutral.values()) else "")
                          + f"; latents from partial DDIM trajectories ({config.synthesis_steps} steps, guidance "
                          f"{config.synthesis_guidance_scale}): {sampling}"],
            ["training", f"{config.steps} Adam steps, batch {config.batch_size}, learning rate {config.learning_rate}, "
                         f"mixed precision {config.mixed_precision}, seed {config.seed}"],
        ],
    }
    trained.add_to(record, config)
    return record, trained.artifacts()
