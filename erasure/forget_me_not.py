"""FMN: Forget-Me-Not, attention re-steering (Zhang et al., CVPR Workshops 2024).

On images of the concept, noised at a random timestep, the UNet's cross-attention probabilities
at the concept's token positions are driven to zero: the loss is the L2 norm of all of them, over
every cross-attention layer, heads and query positions,

    L = ‖ concat_layers softmax(Q Kᵀ/√d)[:, :, concept positions] ‖₂

so the image stops attending to the words that name the concept. The concept's positions are the
forget prompt's tokens that its paired misaligned prompt lacks ('a photo of a nude person' against
'a photo of a person wearing clothes': 'nude'; the official code matches the concept's own words),
and, as the official `use_pooler`, every end-of-text token (on SD 1.x tokenizers, which pad with
it, that includes the padding).

Defaults follow the official attention stage (SHI-Labs/Forget-Me-Not, configs/attn.yaml and
src/train_attn.py): the whole UNet trains (`only_optimize_ca: false`), AdamW lr 2e-6, weight decay
0.01, gradient norm clipped at 1.0, 35 steps at batch 1, about 10 images of the concept (its
data folders hold 10 real images; here the base model draws them unless `--forget-images` gives
a folder). The official optional first stage, textual inversion of the concept into new tokens
(`use_ti`), is not implemented: the prompt's own words carry the concept.
"""

from dataclasses import dataclass, replace
from typing import Literal

from .config import ClippedAdamWConfig, option
from .errors import EraseError
from .prompts import preset_prompts

CITATION = """@inproceedings{zhang2024forget,
  title     = {Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion Models},
  author    = {Zhang, Gong and Wang, Kai and Xu, Xingqian and Wang, Zhangyang and Shi, Humphrey},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops},
  year      = {2024}
}"""
DATA = "forget and retain data"


@dataclass
class ForgetMeNotConfig(ClippedAdamWConfig):
    """Forget-Me-Not's settings; each field's help says where its default comes from."""

    forget_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--forget-prompt", metavar="TEXT",
        help="prompt of the concept's images (repeatable); default: the model profile's, else 'a photo of a nude "
             "person' for nudity and 'a photo of CONCEPT' otherwise")
    misaligned_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--misaligned-prompt", metavar="TEXT",
        help="prompt paired with each forget prompt: the forget prompt's tokens it lacks are the concept's; default: "
             "the model profile's, else 'a photo of a person wearing clothes' for nudity and 'a photo' otherwise")
    forget_images: str | None = option(None, group=DATA, metavar="DIR", help="use these images of the concept "
                                       "(captions from metadata.jsonl or .txt files) instead of synthesizing")
    num_images: int | None = option(None, official=10, group=DATA,
                                    help="images of the concept synthesized by the base model (official: 10 real images)")
    steps: int | None = option(None, official=35, group="training", help="optimizer steps")
    batch_size: int | None = option(None, official=1, group="training", help="samples per step and device")
    learning_rate: float | None = option(None, official=2e-6, group="training", help="AdamW learning rate")
    scope: Literal["full", "xattn"] | None = option(
        None, official="full", group="FMN", help="weights trained: the whole UNet (official) or cross-attention only")
    include_end_tokens: bool | None = option(
        None, official=True, group="FMN", help="re-steer attention away from the end-of-text token too (official "
                                               "use_pooler; on tokenizers that pad with it, every padding position)")

    def check(self) -> None:
        super().check()
        self.require_prompts("forget_prompts", "misaligned_prompts")
        self.require_positive("num_images")

    def concept_defaults(self) -> dict:
        preset = preset_prompts(self.concept)
        return {"forget_prompts": preset.forget, "misaligned_prompts": preset.retain}

    def narrower(self):
        return replace(self, scope="xattn") if self.scope == "full" else None

    def check_inputs(self) -> None:
        from .data import read_image_folder

        if self.forget_images:
            read_image_folder(self.forget_images, self.forget_prompts[0])  # fail on a bad folder before any work

    def check_with_pipeline(self, pipeline) -> None:
        from .diffusion import check_prompt_lengths

        check_prompt_lengths(pipeline.tokenizer, self.forget_prompts + self.misaligned_prompts, "FMN prompt")
        concept_positions(pipeline.tokenizer, self.forget_prompts, self.misaligned_prompts, self.include_end_tokens)


def concept_positions(tokenizer, forget_prompts: list[str], misaligned_prompts: list[str], include_end_tokens: bool):
    """{forget prompt: bool (model_max_length,)}: its tokens the paired misaligned prompt lacks (a
    token-level diff), and with `include_end_tokens` every end-of-text position."""
    import difflib

    import torch

    positions = {}
    for k, prompt in enumerate(forget_prompts):
        paired = misaligned_prompts[k % len(misaligned_prompts)]
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
        own, other = tokenizer(prompt).input_ids, tokenizer(paired).input_ids
        mask = torch.zeros(len(ids), dtype=torch.bool)
        for tag, start, end, _, _ in difflib.SequenceMatcher(None, own, other, autojunk=False).get_opcodes():
            if tag in ("replace", "delete"):
                mask[start:end] = True
        if not mask.any():
            raise EraseError(f"forget prompt {prompt!r} has no token that its misaligned prompt {paired!r} lacks, so "
                             "FMN cannot tell which words name the concept: give a --misaligned-prompt without them")
        if include_end_tokens:
            mask |= torch.tensor(ids) == tokenizer.eos_token_id
        positions[prompt] = mask
    return positions


class ConceptAttentionProbe:
    """Keeps, per cross-attention call, the sum of squared attention probabilities at the concept
    positions (`positions`, bool (batch, keys)); installed as an ExplicitAttention processor."""

    def __init__(self):
        self.positions = None
        self.squares = []

    def observe(self, probs, is_cross: bool) -> None:
        import torch

        heads = probs.shape[0] // self.positions.shape[0]
        at_concept = self.positions.repeat_interleave(heads, dim=0)[:, None, :]
        self.squares.append(torch.where(at_concept, probs, 0).float().pow(2).sum())


def erase_pipeline(pipeline, config: ForgetMeNotConfig, session) -> tuple[dict, dict]:
    import torch
    from diffusers import DDPMScheduler

    from ..pipelines.suppress_eot import ExplicitAttention
    from .data import training_latents
    from .diffusion import encode_prompts, epoch_indices, noise_batch, stack_embeddings
    from .saliency import in_scope
    from .lora_training import TrainedWeights
    from .training import fit

    accelerator, timer = session.accelerator, session.timer
    device, unet = accelerator.device, pipeline.unet
    pipeline.to(device)
    with timer.phase("data"), accelerator.main_process_first():
        data = training_latents(pipeline, config, config.forget_prompts, model_key=session.model_key,
                                accelerator=accelerator, show_progress=session.show_progress,
                                images=config.forget_images)
    positions = concept_positions(pipeline.tokenizer, sorted(set(data.prompts)) if config.forget_images
                                  else config.forget_prompts, config.misaligned_prompts, config.include_end_tokens)
    embeddings = encode_prompts(pipeline, list(positions), device)
    pipeline.text_encoder.to("cpu")  # frozen and no longer needed: keep accelerator memory for training
    pipeline.vae.to("cpu")

    probe, own_processors = ConceptAttentionProbe(), unet.attn_processors
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            module.set_processor(ExplicitAttention(probe.observe))
    trainable = [n for n, _ in unet.named_parameters() if in_scope(n, config.scope)]
    trained = TrainedWeights(pipeline, "unet", trainable, config, config.gradient_checkpointing)
    optimizer = torch.optim.AdamW(trained.parameters, lr=config.learning_rate,
                                  weight_decay=config.weight_decay, fused=device.type in ("cuda", "cpu"))
    model, optimizer = accelerator.prepare(unet, optimizer)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    per_process = config.batch_size
    global_batch = per_process * accelerator.num_processes
    rows = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)

    def compute_loss(step, micro):
        draw = step * config.gradient_accumulation_steps + micro
        ids = epoch_indices(len(data), global_batch, draw * global_batch, config.seed, "fmn")[rows]
        latents = data.latents[ids].to(device)
        t, noise = noise_batch([(config.seed, "fmn", draw, j) for j in range(global_batch)][rows], latents.shape[1:],
                               noise_scheduler.config.num_train_timesteps)
        t, noise = t.to(device), noise.to(device)
        captions = [data.prompts[i] for i in ids]
        probe.positions = torch.stack([positions[c] for c in captions]).to(device)
        probe.squares = []
        with accelerator.autocast():
            model(noise_scheduler.add_noise(latents, noise, t), t, stack_embeddings(embeddings, captions))
        loss = torch.stack(probe.squares).sum().sqrt()  # the norm of every kept probability, as the official loss
        return loss, {"loss": loss.item()}

    with timer.phase("training"):
        logs, resumed_from = fit(
            accelerator, model, optimizer, compute_loss, config, checkpoint_dir=session.work_dir,
            step_callback=session.step_callback, show_progress=session.show_progress, description="FMN",
            max_grad_norm=config.max_grad_norm)
    unet.set_attn_processor(own_processors)
    trained.finish()
    pipeline.to(device)
    share = trained.scope_share
    tokenizer = pipeline.tokenizer
    words = {p: tokenizer.decode([i for i, keep in zip(tokenizer(p, padding="max_length", truncation=True,
                                                                 max_length=tokenizer.model_max_length).input_ids, m)
                                  if keep and i != tokenizer.eos_token_id]) for p, m in positions.items()}
    record = {
        "prompts": {"forget": config.forget_prompts, "misaligned": config.misaligned_prompts},
        "concept_tokens": words,
        "data": {"forget_size": len(data)},
        "steps": config.steps,
        "resumed_from_step": resumed_from,
        "final_losses": logs,
        "summary": [
            ["objective", "the L2 norm of the cross-attention probabilities at the concept's tokens ("
                          + "; ".join(f"{p!r}: {w!r}" for p, w in words.items())
                          + (", and every end-of-text token" if config.include_end_tokens else "") + "), minimised"],
            ["trained parameters", f"`{config.scope}`: {len(trainable)} tensors, {share:.1%} of the UNet weights"],
            ["concept images", f"{len(data)} " + ("from a folder" if config.forget_images else
                                                  f"generated by the base model ({config.synthesis_steps} "
                                                  f"{config.synthesis_scheduler or 'pipeline-sampler'} steps, "
                                                  f"guidance {config.synthesis_guidance_scale})")],
            ["training", f"{config.steps} AdamW steps, batch {config.batch_size}, learning rate {config.learning_rate}, "
                         f"weight decay {config.weight_decay}, gradient norm clipped at {config.max_grad_norm}, "
                         f"mixed precision {config.mixed_precision}, seed {config.seed}"],
        ],
    }
    trained.add_to(record, config)
    return record, trained.artifacts()
