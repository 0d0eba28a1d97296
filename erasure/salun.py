"""SalUn: saliency-masked unlearning for Stable Diffusion (Fan et al., ICLR 2024).

1. Saliency: sum ∇θ of the forget loss MSE(ε, (1+w)·ε_θ(z_t,t,c_f) − w·ε_θ(z_t,t,∅)) over the forget
   set, keep the top `mask_ratio` of |G| ranked globally over the whole UNet, and of those the
   entries inside the parameter `scope` train (the official code's rule; `mask_ranking scope`
   ranks within the scope instead, so that exactly `mask_ratio` of it trains).
2. Unlearning: L = MSE(ε_θ(z_t,t,c_f), stopgrad ε_θ(z_t,t,c')) + α·MSE on the retain set, with
   Adam without weight decay over the salient entries only (MaskedAdam): every non-salient
   weight stays bit-identical and holds no optimizer state.

Defaults follow the official code (OPTML-Group/Unlearn-Saliency, SD/): w = 7.5, ratio 0.5,
Adam lr 1e-5, batch 8, 100 steps (one epoch of 800 images), 800 images synthesized with 50
steps at guidance 7.5, α = 0.1 for nudity and 0.5 class-wise, the whole UNet as scope, the
misaligned target from the current model. The prompts follow its two protocols
(erasure/prompts.py). A model profile may recommend its own values (each field says which).
Several concepts in one run share one mask ranked on all their forget images (`concept_masks
joint`, the default), or each concept's own mask merged (`per-concept`, the multi-concept issue's
other option; the official code erases one concept per run).

The config is importable without torch (the CLI builds and checks it first); torch, diffusers
and the shared primitives are imported where the work starts.
"""

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, ClassVar, Literal

from .config import ImageSynthesisConfig, SynthesisConfig, option
from .errors import EraseError, shorten
from .prompts import preset_prompts

if TYPE_CHECKING:
    from .data import LatentSet

CITATION = """@inproceedings{fan2024salun,
  title     = {SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image Classification and Generation},
  author    = {Fan, Chongyu and Liu, Jiancheng and Zhang, Yihua and Wong, Eric and Wei, Dennis and Liu, Sijia},
  booktitle = {International Conference on Learning Representations},
  year      = {2024}
}"""
RETAIN_LOSS_WEIGHT = {"nudity": 0.1, "class-wise": 0.5}
DATA, SALIENCY = "forget and retain data", "saliency"


@dataclass
class ForgetRetainData(ImageSynthesisConfig):
    """A forget and a retain set of images with their prompts: synthesized by the base model, or
    your image folders (SalUn, ScissorHands, SLUG)."""

    forget_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--forget-prompt", metavar="TEXT",
        help="prompt showing the concept (repeatable); default: the model profile's, else 'a photo of a nude person' "
             "for nudity and 'a photo of CONCEPT' otherwise")
    retain_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--retain-prompt", metavar="TEXT",
        help="prompt of the retain set (repeatable); default: the model profile's, else 'a photo of a person "
             "wearing clothes' for nudity and 'a photo' otherwise")
    forget_images: str | None = option(None, group=DATA, metavar="DIR", help="use these images as the forget set "
                                       "(captions from metadata.jsonl or .txt files) instead of synthesizing")
    retain_images: str | None = option(None, group=DATA, metavar="DIR",
                                       help="use these images as the retain set instead of synthesizing")
    num_images: int = option(800, group=DATA, help="images synthesized for each of the forget and retain sets")

    def check(self) -> None:
        super().check()
        self.require_prompts("forget_prompts", "retain_prompts")
        self.require_positive("num_images")

    def concept_defaults(self) -> dict:
        preset = preset_prompts(self.concept)
        return {"forget_prompts": preset.forget, "retain_prompts": self.retain_prompts or preset.retain}

    def check_inputs(self) -> None:
        from .data import read_image_folder

        for folder, texts in ((self.forget_images, self.forget_prompts), (self.retain_images, self.retain_prompts)):
            if folder:
                read_image_folder(folder, texts[0])  # fail on a bad folder before any work

    def check_with_pipeline(self, pipeline) -> None:
        from .diffusion import check_prompt_lengths

        check_prompt_lengths(pipeline.tokenizer, self.forget_prompts + self.retain_prompts, f"{self.method} prompt")


@dataclass
class ForgetRetainConfig(SynthesisConfig, ForgetRetainData):
    """What the methods that fine-tune the UNet on a forget and a retain set share (SalUn,
    ScissorHands): the two sets, the forget-gradient pass that ranks weights, the misaligned target."""

    ERASED_FIELDS: ClassVar[tuple[str, ...]] = ("forget_prompts",)
    PAIRED_FIELDS: ClassVar[dict] = {"misaligned_prompts": ("forget_prompts", "retain_prompts")}
    KEPT_FIELDS: ClassVar[tuple[str, ...]] = ("retain_prompts",)

    misaligned_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--misaligned-prompt", metavar="TEXT",
        help="prompt c' whose prediction forget images are steered to (repeatable, paired with forget prompts); "
             "default: the retain prompts (or the model profile's, when you give no retain prompts)")
    # the forget-gradient pass (SalUn's saliency, ScissorHands' connection sensitivity)
    saliency_guidance_scale: float | None = option(
        None, official=7.5, group=SALIENCY, help="w of the guided forget loss MSE(ε, (1+w)·ε(c_f) − w·ε(∅)) whose "
                                                 "gradient ranks weights (0: the plain denoising loss)")
    saliency_batch_size: int = option(8, group=SALIENCY, help="forget samples per gradient batch; the ranking depends "
                                                              "on it, not on the number of processes")
    misaligned_target: Literal["current", "base"] | None = option(
        None, official="current", group="training",
        help="whose prediction for the misaligned prompt the forget branch is pulled to: the current model "
             "(official code) or the frozen base model (steadier)")

    def check(self) -> None:
        super().check()
        self.require_prompts("misaligned_prompts")
        self.require_positive("saliency_batch_size")
        if self.saliency_guidance_scale is not None and self.saliency_guidance_scale < 0:
            raise EraseError(f"`saliency_guidance_scale` must be 0 or more, got {self.saliency_guidance_scale}")

    def with_defaults(self, profile: dict):
        if self.retain_prompts and not self.misaligned_prompts:  # steer forget images to what your retain set shows
            profile = {k: v for k, v in profile.items() if k != "misaligned_prompts"}
        return super().with_defaults(profile)

    def concept_defaults(self) -> dict:
        defaults = super().concept_defaults()
        return defaults | {"misaligned_prompts": defaults["retain_prompts"]}

    def unlearning_objective(self) -> tuple[float, float, Literal["misaligned", "ascent"]]:
        """(forget weight, retain weight, forget target) of the loss `unlearn` minimises: the forget
        branch is pulled to the misaligned prompt's prediction, or (ascent) its denoising loss is maximised."""
        raise NotImplementedError

    def check_with_pipeline(self, pipeline) -> None:
        from .diffusion import check_prompt_lengths

        super().check_with_pipeline(pipeline)
        check_prompt_lengths(pipeline.tokenizer, self.misaligned_prompts, f"{self.method} prompt")


@dataclass
class SalUnConfig(ForgetRetainConfig):
    """SalUn's settings; each field's help says where its default comes from."""

    mask_ratio: float = option(0.5, group=SALIENCY, help="share of the scope's weights to update, in (0, 1]")
    scope: Literal["full", "xattn", "noxattn"] | None = option(
        None, official="full", group=SALIENCY,
        help="weights eligible for the mask: full UNet, xattn (cross-attention), noxattn")
    mask_ranking: Literal["unet", "scope"] | None = option(
        None, official="unet", group=SALIENCY,
        help="where the top mask_ratio is ranked: over the whole UNet, then the scope's entries of that top share "
             "train (official code), or within the scope, so exactly mask_ratio of the scope trains")
    concept_masks: Literal["joint", "per-concept"] = option(
        "joint", group=SALIENCY,
        help="several concepts in one run: one mask ranked on all their forget images (joint), or each concept's "
             "own top mask_ratio from its own images, merged (per-concept: a concept with weaker gradients still "
             "gets its share; the merged mask is denser)")
    # unlearning (steps, batch size, learning rate: TrainingConfig)
    retain_loss_weight: float | None = option(None, group="training", help="alpha, weight of the retain loss "
                                              "(default: the model profile's, else 0.1 for nudity, 0.5 otherwise)")

    def check(self) -> None:
        super().check()
        if not 0 < self.mask_ratio <= 1:
            raise EraseError(f"`mask_ratio` {self.mask_ratio} is outside (0, 1]: use e.g. 0.5 to update the most "
                             "salient half")

    def concept_defaults(self) -> dict:
        return super().concept_defaults() | {"retain_loss_weight": RETAIN_LOSS_WEIGHT[preset_prompts(self.concept).kind]}

    def unlearning_objective(self):
        return 1.0, self.retain_loss_weight, "misaligned"

    def narrower(self):
        # Both measured on the shapes model (its profile's notes): the whole UNet broke colour binding,
        # the current model's target dragged the misaligned prompts along.
        gentler = replace(self, scope="xattn" if self.scope == "full" else self.scope, misaligned_target="base",
                          mask_ranking="scope")
        return None if gentler == self else gentler

    def saliency_mask(self, gradients: dict) -> dict:
        """SalUn's hard mask: the top `mask_ratio` of |gradient| may change, nothing else."""
        from .saliency import saliency_mask_from_scores

        return saliency_mask_from_scores(gradients, self.mask_ratio)


def compute_saliency(pipeline, forget: "LatentSet", config: SalUnConfig, accelerator, show_progress=True,
                     concept_configs: list = ()):
    """The saliency mask over all UNet parameters (config.saliency_mask inside the scope, zero outside).
    With `concept_masks` per-concept and several `concept_configs` (each concept's own settings), each
    concept's forget images rank the weights apart and the masks merge: an entry any concept selects
    may change (for soft masks, its largest weight)."""
    import torch

    from .saliency import full_mask, in_scope

    unet = pipeline.unet
    # the weights the saliency is ranked over: the whole UNet (official) or the scope alone
    ranked = [n for n, _ in unet.named_parameters() if config.mask_ranking == "unet" or in_scope(n, config.scope)]
    groups = [forget]
    if config.concept_masks == "per-concept" and len(concept_configs) > 1:
        groups = [forget_subset(forget, c.forget_prompts) for c in concept_configs]
    merged = None
    for group in groups:
        mask = config.saliency_mask(forget_gradient_magnitudes(pipeline, group, ranked, config, accelerator, show_progress))
        merged = mask if merged is None else {n: torch.maximum(merged[n], m) for n, m in mask.items()}
    scope_masks = {n: m for n, m in merged.items() if in_scope(n, config.scope)}
    return full_mask([(n, p.shape) for n, p in unet.named_parameters()], scope_masks)


def forget_subset(forget: "LatentSet", prompts: list[str]) -> "LatentSet":
    """The forget images captioned with one of `prompts` (one concept's of a joint erase)."""
    from .data import LatentSet

    wanted = set(prompts)
    rows = [i for i, p in enumerate(forget.prompts) if p in wanted]
    if not rows:
        raise EraseError(f"no forget image is captioned with a forget prompt of one concept ({shorten(prompts[0])}), "
                         "so `concept_masks` per-concept cannot rank its weights: caption the forget images with "
                         "each concept's prompts, or use `concept_masks` joint")
    return LatentSet(forget.latents[rows], [forget.prompts[i] for i in rows])


def forget_gradient_magnitudes(pipeline, forget: "LatentSet", names: list[str], config: ForgetRetainConfig,
                               accelerator, show_progress=True) -> dict:
    """|Σ ∇θ ℓ_f| over the forget set for the UNet parameters `names` (float32), ℓ_f the guided
    denoising loss with w = config.saliency_guidance_scale.

    The same result whatever the number of processes: the forget set is cut into the same batches
    of `saliency_batch_size` (dealt round-robin to the processes) and their gradients are summed in
    float64, where adding float32 values is exact, so neither the split nor the order of addition
    changes a bit.
    """
    import torch
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from .diffusion import encode_prompts, noise_batch, per_sample_mse, prediction_target, stack_embeddings

    unet, device = pipeline.unet, accelerator.device
    ranked = {n: p for n, p in unet.named_parameters() if n in set(names)}
    for name, param in unet.named_parameters():
        param.requires_grad_(name in ranked)
        param.grad = None
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    sums = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in ranked.items()}

    def add_to_sum(name):
        def hook(param):  # move each gradient into its sum as soon as it is complete: no float32 copy stays
            sums[name].add_(param.grad)
            param.grad = None
        return hook

    hooks = [p.register_post_accumulate_grad_hook(add_to_sum(n)) for n, p in ranked.items()]
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    embeddings = encode_prompts(pipeline, forget.prompts + [""], device)
    w = config.saliency_guidance_scale
    size = config.saliency_batch_size
    batches = [list(range(i, min(i + size, len(forget)))) for i in range(0, len(forget), size)]
    batches = batches[accelerator.process_index::accelerator.num_processes]
    for batch in tqdm(batches, desc="saliency", disable=not (show_progress and accelerator.is_main_process)):
        latents = forget.latents[batch].to(device)
        timesteps, noise = noise_batch([(config.seed, "saliency", i) for i in batch], latents.shape[1:],
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
        (loss / size).backward()
    for hook in hooks:
        hook.remove()
    if accelerator.num_processes > 1:
        sums = {n: accelerator.reduce(s, "sum") for n, s in sums.items()}
    return {n: sums.pop(n).abs_().float() for n in list(ranked)}  # one float64 sum alive at a time


def unlearn(pipeline, forget: "LatentSet", retain: "LatentSet", trainable: list[str], saliency_mask: dict | None,
            config: ForgetRetainConfig, accelerator,
            checkpoint_dir: str | None = None, step_callback: Callable[[int, dict], None] | None = None,
            show_progress=True) -> tuple[dict, int, dict, "TrainedWeights"]:
    """Masked fine-tuning of pipeline.unet in place; returns the last step's losses, the step it resumed
    from, the optimizer state's size (with what dense Adam over the trained tensors would hold) and
    what trained (its LoRA factors, with `adapter` lora).

    Only entries the mask allows move, and only they get optimizer state (MaskedAdam); a soft
    mask (floats in [0, 1]) scales each entry's update. Without a mask every entry of the
    `trainable` UNet parameters moves, under plain Adam; so does a LoRA on their layers, the
    mask having chosen the layers. The loss is config.unlearning_objective()'s weighted forget and
    retain terms.
    """
    import torch
    from diffusers import DDPMScheduler

    from .diffusion import encode_prompts, epoch_indices, noise_batch, per_sample_mse, prediction_target, stack_embeddings
    from .lora_training import TrainedWeights
    from .masked_adam import MaskedAdam
    from .training import fit

    unet, device = pipeline.unet, accelerator.device
    forget_weight, retain_weight, forget_target = config.unlearning_objective()
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    misaligned = [config.misaligned_prompts[i % len(config.misaligned_prompts)] for i in range(len(forget))]
    embeddings = encode_prompts(pipeline, forget.prompts + retain.prompts + misaligned, device)
    pipeline.text_encoder.to("cpu")  # frozen and no longer needed: keep accelerator memory for training
    pipeline.vae.to("cpu")

    frozen_target = config.misaligned_target == "base" and forget_target == "misaligned"
    # (the frozen target's base values are taken here, before a resume loads a checkpoint)
    trained = TrainedWeights(pipeline, "unet", trainable, config, config.gradient_checkpointing, frozen_target)
    if saliency_mask is None or trained.lora:
        adam = torch.optim.Adam(trained.parameters, lr=config.learning_rate, fused=device.type in ("cuda", "cpu"))
    else:
        adam = MaskedAdam([(p, saliency_mask[n]) for n, p in zip(trained.names, trained.parameters)],
                          lr=config.learning_rate)
    model, optimizer = accelerator.prepare(unet, adam)

    per_process, processes = config.batch_size, accelerator.num_processes
    global_batch = per_process * processes
    rows = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)
    T = noise_scheduler.config.num_train_timesteps

    def compute_loss(step, micro):
        # the global batch of this (step, micro) is the same whatever the number of processes
        draw = step * config.gradient_accumulation_steps + micro
        forget_ids = epoch_indices(len(forget), global_batch, draw * global_batch, config.seed, "forget")[rows]
        retain_ids = epoch_indices(len(retain), global_batch, draw * global_batch, config.seed, "retain")[rows]
        keys = [(config.seed, "unlearn", draw, j) for j in range(global_batch)][rows]
        t_forget, noise_forget = noise_batch([k + ("forget",) for k in keys], forget.latents.shape[1:], T)
        t_retain, noise_retain = noise_batch([k + ("retain",) for k in keys], retain.latents.shape[1:], T)
        forget_latents, retain_latents = forget.latents[forget_ids].to(device), retain.latents[retain_ids].to(device)
        t_forget, noise_forget = t_forget.to(device), noise_forget.to(device)
        t_retain, noise_retain = t_retain.to(device), noise_retain.to(device)
        noisy_forget = noise_scheduler.add_noise(forget_latents, noise_forget, t_forget)
        noisy_retain = noise_scheduler.add_noise(retain_latents, noise_retain, t_retain)
        forget_emb = stack_embeddings(embeddings, [forget.prompts[i] for i in forget_ids])
        misaligned_emb = stack_embeddings(embeddings, [misaligned[i] for i in forget_ids])
        retain_emb = stack_embeddings(embeddings, [retain.prompts[i] for i in retain_ids])
        with accelerator.autocast():
            if forget_target == "ascent":  # the forget branch's own denoising target, its loss maximised
                target = prediction_target(noise_scheduler, forget_latents, noise_forget, t_forget)
            else:
                with torch.no_grad():
                    inputs = (noisy_forget, t_forget, misaligned_emb)
                    unwrapped = accelerator.unwrap_model(model)
                    target = (trained.base_output(unwrapped, *inputs) if frozen_target else unwrapped(*inputs)).sample
            # forget and retain branches in one forward: GroupNorm is per sample, so this is exact
            prediction = model(torch.cat([noisy_forget, noisy_retain]), torch.cat([t_forget, t_retain]),
                               torch.cat([forget_emb, retain_emb])).sample
        forget_pred, retain_pred = prediction.chunk(2)
        forget_loss = per_sample_mse(forget_pred, target).mean()
        retain_loss = per_sample_mse(
            retain_pred, prediction_target(noise_scheduler, retain_latents, noise_retain, t_retain)).mean()
        loss = forget_weight * forget_loss + retain_weight * retain_loss
        return loss, {"loss": loss.item(), "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()}

    logs, resumed_from = fit(
        accelerator, model, optimizer, compute_loss, config, checkpoint_dir=checkpoint_dir,
        step_callback=step_callback, show_progress=show_progress, description="unlearning")
    trained.finish()
    masked = saliency_mask is not None and not trained.lora
    state = {"bytes": adam.state_bytes() if masked else sum(8 * p.numel() + 4 for p in trained.parameters),
             "dense_adam_bytes": 8 * trained.scope_entries + 4 * trained.scope_tensors}
    return logs, resumed_from, state, trained


def build_sets(pipeline, config: ForgetRetainConfig, accelerator, model_key: str, show_progress=True):
    """The forget and retain latents (two LatentSets): encoded image folders, or synthesized by the pipeline itself."""
    from .data import training_latents

    pipeline.to(accelerator.device)
    with accelerator.main_process_first():  # the main process fills the cache; the others read it
        return tuple(training_latents(pipeline, config, prompts, model_key=model_key, accelerator=accelerator,
                                      show_progress=show_progress, images=images)
                     for images, prompts in ((config.forget_images, config.forget_prompts),
                                             (config.retain_images, config.retain_prompts)))


def erase_pipeline(pipeline, config: SalUnConfig, session) -> tuple[dict, dict]:
    """Data, saliency mask, masked unlearning of `pipeline.unet`; the mask goes to saliency_mask.safetensors."""
    from .saliency import cached_mask, mask_densities

    accelerator, timer = session.accelerator, session.timer
    with timer.phase("data"):
        forget, retain = build_sets(pipeline, config, accelerator, session.model_key, session.show_progress)
    mask_file = os.path.join(session.work_dir, "saliency_mask.safetensors") if session.work_dir else None
    with timer.phase("saliency"):
        mask = cached_mask(mask_file, lambda: compute_saliency(pipeline, forget, config, accelerator, session.show_progress,
                                                               session.concept_configs),
                           accelerator.is_main_process, concept=config.concept, ratio=config.mask_ratio,
                           scope=config.scope, method=config.method)
    with timer.phase("unlearning"):
        # only parameters with a salient entry train: the rest get no gradient, no optimizer state
        trainable = [n for n, _ in pipeline.unet.named_parameters() if mask[n].any()]
        logs, resumed_from, optimizer_state, trained = unlearn(
            pipeline, forget, retain, trainable, mask, config, accelerator, session.work_dir, session.step_callback,
            session.show_progress)
    pipeline.to(accelerator.device)  # unlearn() parked the text encoder and VAE on the CPU
    density, mean_weight, per_layer = mask_densities(mask)
    record = unlearning_record(config, forget, retain, logs, resumed_from, optimizer_state, trained)
    record["mask"] = {"ratio": config.mask_ratio, "scope": config.scope, "ranking": config.mask_ranking,
                      "concepts": config.concept_masks if len(session.concept_configs) > 1 else "joint",
                      "density": density, "mean_weight": mean_weight, "layer_density": per_layer}
    record["summary"] += [
        ["saliency mask", f"{_mask_kind(mask)} over `{config.scope}` parameters, top {config.mask_ratio} of the "
                          f"gradient magnitudes ranked over the {'whole UNet' if config.mask_ranking == 'unet' else 'scope'}"
                          f"{' for each concept apart, merged' if record['mask']['concepts'] == 'per-concept' else ''}; {density:.1%} of all UNet weights may change (`saliency_mask.safetensors`)"],
        ["unlearning", f"{config.steps} Adam steps, batch {config.batch_size}, learning rate {config.learning_rate}, "
                       f"retain loss weight {config.retain_loss_weight}, target from the {config.misaligned_target} "
                       f"model, mixed precision {config.mixed_precision}, seed {config.seed}"],
    ]
    return record, {"saliency_mask": mask, **trained.artifacts()}


def unlearning_record(config: ForgetRetainConfig, forget, retain, logs: dict, resumed_from: int,
                      optimizer_state: dict, trained) -> dict:
    """The erasure.json fields of a forget/retain fine-tune (SalUn, ScissorHands, EraseDiff), the data line of
    its summary first."""
    data = (f"{len(forget)} / {len(retain)} images "
            + ("from folders" if config.forget_images or config.retain_images
               else f"generated by the base model ({config.synthesis_steps} {config.synthesis_scheduler or 'pipeline-sampler'} "
                 f"steps, guidance {config.synthesis_guidance_scale})"))
    record = {
        "prompts": {"forget": config.forget_prompts, "retain": config.retain_prompts,
                    "misaligned": config.misaligned_prompts},
        "data": {"forget_size": len(forget), "retain_size": len(retain)},
        "steps": config.steps,
        "resumed_from_step": resumed_from,
        "final_losses": logs,
        "optimizer_state": optimizer_state,
        "summary": [["forget / retain set", data]],
    }
    trained.add_to(record, config)
    return record


def _mask_kind(mask) -> str:
    import torch

    return "hard 0/1 mask" if all(m.dtype == torch.bool for m in mask.values()) else "soft mask (weights in [0, 1])"
