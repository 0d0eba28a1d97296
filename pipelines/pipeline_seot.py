"""SEOT as a diffusers pipeline: suppress a concept named in the prompt at inference, no training.

"Get What You Want, Not What You Don't: Image Content Suppression for Text-to-Image Diffusion
Models" (Li et al., ICLR 2024; official code sen-mao/SuppressEOT). The concept's words and the
end-of-text embeddings after them carry the concept; SEOT changes those text embeddings, never a
weight:

- Soft-weighted regularization (SWR): the prompt embeddings at the concept's word tokens and at every
  position from the end-of-text token on form a matrix whose singular values σ become σ·e^(−ασ): the
  dominant directions, the concept's, shrink most. α = 1, applied from sampling step ⌈0.2·N⌉ on
  (the official `alpha` and `cross_retain_steps` 0.2, i.e. τ = 0.8).
- Inference-time text embedding optimization (ITO): in steps ⌈0.2·N⌉ to ⌈0.4·N⌉ − 1 (the official
  `max_step_to_erase` 20 of 50), 10 gradient steps per sampling step (`iter_each_step`) move the
  suppressed embeddings so that the UNet's attention maps keep the other words' maps of the
  unsuppressed image (weight 1, cross- and self-attention) and leave the concept's (weight −0.5),
  step size 20·√(linspace(1, 0.1, N)[i]) (the official values for generated images). Each step
  restarts from the SWR embeddings, as the official code does. The maps are those of the down and
  up blocks' attention at their lowest resolution (16×16 on SD 1.x, the official choice), averaged
  over all heads and layers (the official code's reshape keeps half the heads of a one-prompt
  pass); a word's self-attention mask is its cross-attention map above 0.85 (concept) or 0.95
  (other words) of its maximum, taken at the map's own resolution. The unsuppressed image is
  sampled beside the suppressed one from the same noise, so optimization doubles the batch.

A prompt that does not contain a suppressed word is left as it is: SEOT suppresses what a prompt
names. Words are matched as token sequences of the pipeline's tokenizer ("circle" does not match
"circles": list both). This file imports only torch and diffusers, so an output folder that carries
it as `pipeline.py` loads with `DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT, trust_remote_code=True)`.
"""

import math

import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)

# Settings this pipeline keeps in model_index.json (a stock StableDiffusionPipeline ignores them).
SUPPRESSION_SETTINGS = ("suppressed_words", "suppression_alpha", "suppression_start", "optimization_iterations",
                        "optimization_end", "optimization_scale", "attention_loss_weights")
CONCEPT_MASK_THRESHOLD, WORD_MASK_THRESHOLD = 0.85, 0.95  # the official calc_mask thresholds


class ExplicitAttention:
    """An attention processor that computes the attention probabilities explicitly and hands them to
    `observe(probs, is_cross)` ((batch·heads, queries, keys), batch-major) before using them."""

    def __init__(self, observe):
        self.observe = observe

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        mask = attn.prepare_attention_mask(attention_mask, context.shape[1], hidden_states.shape[0])
        probs = attn.get_attention_scores(query, key, mask)
        self.observe(probs, encoder_hidden_states is not None)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def word_positions(input_ids: torch.Tensor, words: list[list[int]]) -> torch.Tensor:
    """Bool (batch, length): where each row holds one of the token sequences `words`."""
    found = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, ids in enumerate(input_ids.tolist()):
        for word in words:
            for start in range(1, len(ids) - len(word) + 1):  # position 0 is the start token
                if ids[start:start + len(word)] == word:
                    found[row, start:start + len(word)] = True
    return found


def end_positions(input_ids: torch.Tensor, end_token_id: int) -> torch.Tensor:
    """Index of each row's first end-of-text token (the last position when the prompt was cut)."""
    is_end = input_ids == end_token_id
    return torch.where(is_end.any(1), is_end.int().argmax(1), input_ids.shape[1] - 1)


def soft_weighted_regularization(embeds: torch.Tensor, concept: torch.Tensor, ends: torch.Tensor,
                                 alpha: float) -> torch.Tensor:
    """SWR: for each row with concept tokens, σ ← σ·e^(−ασ) on the matrix of its concept-token and
    end-of-text-onwards embeddings (rows without concept tokens are returned unchanged)."""
    out = embeds.clone()
    for row in torch.nonzero(concept.any(1)).flatten().tolist():
        positions = torch.cat([torch.nonzero(concept[row]).flatten(),
                               torch.arange(int(ends[row]), embeds.shape[1], device=concept.device)]).unique()
        block = embeds[row, positions].double().T  # (features, tokens): the official layout
        u, s, vh = torch.linalg.svd(block, full_matrices=False)
        out[row, positions] = (u @ torch.diag(s * torch.exp(-alpha * s)) @ vh).T.to(embeds.dtype)
    return out


def suppressed_embeddings(tokenizer, settings: dict, input_ids: torch.Tensor, embeds: torch.Tensor):
    """The SWR-suppressed `embeds` of prompts tokenized as `input_ids`, and which tokens are the concept's."""
    words = [tokenizer(w, add_special_tokens=False).input_ids for w in settings["suppressed_words"]]
    concept = word_positions(input_ids, [w for w in words if w]).to(embeds.device)
    ends = end_positions(input_ids, tokenizer.eos_token_id).to(embeds.device)
    return soft_weighted_regularization(embeds, concept, ends, settings["suppression_alpha"]), concept, ends


def suppression_of(pipeline) -> dict | None:
    """The SEOT settings a pipeline applies (this class's, or those an in-memory erase attached), else None."""
    settings = getattr(pipeline, "suppression", None)
    return settings if settings and settings.get("suppressed_words") else None


def _cosine_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=dim)


def attention_loss(original: dict, suppressed: dict, concept: torch.Tensor, ends: torch.Tensor,
                   weights: tuple) -> torch.Tensor:
    """ITO's loss, summed over the batch: cosine distances between the unsuppressed and suppressed
    attention maps, of the other words (kept, weights[0] and [2]) and of the concept (weights[1] and
    [3], negative: pushed apart). Cross maps are (batch, pixels, tokens), self maps (batch, pixels, pixels)."""
    cross_o, cross_s = original["cross"].double(), suppressed["cross"].double()
    positions = torch.arange(concept.shape[1], device=concept.device)
    word = (positions >= 1) & (positions[None] < ends[:, None])  # the prompt's tokens between start and end
    is_concept, is_other = word & concept, word & ~concept
    cross = _cosine_distance(cross_o, cross_s, dim=1)  # (batch, tokens)
    threshold = torch.where(is_concept, CONCEPT_MASK_THRESHOLD, WORD_MASK_THRESHOLD).to(cross_o.dtype)
    masks = cross_o >= threshold[:, None, :] * cross_o.amax(1, keepdim=True)  # (batch, pixels, tokens)
    self_ = _cosine_distance(original["self"].double(), suppressed["self"].double(), dim=1)  # (batch, key pixels)
    per_token_self = (masks * self_[:, :, None]).sum(1)  # (batch, tokens)
    retain_cross, erase_cross, retain_self, erase_self = weights
    return (retain_cross * (cross * is_other).sum() + erase_cross * (cross * is_concept).sum()
            + retain_self * (per_token_self * is_other).sum() + erase_self * (per_token_self * is_concept).sum())


class AttentionMaps:
    """Records the head- and layer-averaged attention maps of the down and up blocks at their lowest
    resolution while installed on a UNet (`with AttentionMaps(unet) as maps: ...; maps.averaged()`)."""

    def __init__(self, unet):
        self.unet = unet
        down = unet.config.down_block_types
        level = max(k for k, kind in enumerate(down) if "CrossAttn" in kind)
        self.prefixes = (f"down_blocks.{level}.", f"up_blocks.{len(down) - 1 - level}.")
        self.maps = {"cross": [], "self": []}

    def __enter__(self):
        self.saved = self.unet.attn_processors
        recorder = ExplicitAttention(self.observe)
        self.unet.set_attn_processor({name: recorder if name.startswith(self.prefixes) else processor
                                      for name, processor in self.saved.items()})
        return self

    def __exit__(self, *exc):
        self.unet.set_attn_processor(self.saved)

    def observe(self, probs: torch.Tensor, is_cross: bool) -> None:
        self.maps["cross" if is_cross else "self"].append(probs)

    def averaged(self, batch: int) -> dict:
        """{"cross": (batch, pixels, tokens), "self": (batch, pixels, pixels)}, and the record emptied."""
        out = {kind: torch.stack([m.reshape(batch, -1, *m.shape[1:]).mean(1) for m in maps]).mean(0)
               for kind, maps in self.maps.items()}
        self.maps = {"cross": [], "self": []}
        return out


class StableDiffusionSuppressEOTPipeline(StableDiffusionPipeline):
    """StableDiffusionPipeline that suppresses `suppressed_words` wherever a prompt names them (SEOT)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True, suppressed_words: list | None = None,
                 suppression_alpha: float = 1.0, suppression_start: float = 0.2, optimization_iterations: int = 10,
                 optimization_end: float = 0.4, optimization_scale: float = 20.0,
                 attention_loss_weights: list | None = None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.register_to_config(
            suppressed_words=list(suppressed_words or []), suppression_alpha=suppression_alpha,
            suppression_start=suppression_start, optimization_iterations=optimization_iterations,
            optimization_end=optimization_end, optimization_scale=optimization_scale,
            attention_loss_weights=list(attention_loss_weights or [1.0, -0.5, 1.0, -0.5]))

    @property
    def suppression(self) -> dict:
        return {name: self.config[name] for name in SUPPRESSION_SETTINGS}

    def _step_range(self, steps: int) -> tuple[int, int]:
        """First suppressed step, and first step after optimization, of `steps` sampling steps."""
        config = self.config
        start = math.ceil(config.suppression_start * steps)
        end = math.ceil(config.optimization_end * steps) if config.optimization_iterations > 0 else start
        return start, max(start, end)

    def _optimized(self, embeds, start_embeds, latents, erase_latents, step: int, concept, ends):
        """ITO at sampling step `step`: the suppressed embeddings after the official gradient steps."""
        config, unet = self.config, self.unet
        t = self.scheduler.timesteps[step]
        factor = math.sqrt(torch.linspace(1.0, 0.1, len(self.scheduler.timesteps))[step].item())
        trainable = [p for p in unet.parameters() if p.requires_grad]
        unet.requires_grad_(False)  # gradients of the embeddings only
        try:
            with AttentionMaps(unet) as maps, torch.enable_grad():
                with torch.no_grad():
                    unet(self.scheduler.scale_model_input(latents, t), t, encoder_hidden_states=embeds)
                original = maps.averaged(len(embeds))
                current = start_embeds
                for _ in range(config.optimization_iterations):
                    current = current.detach().requires_grad_(True)
                    unet(self.scheduler.scale_model_input(erase_latents, t), t, encoder_hidden_states=current)
                    loss = attention_loss(original, maps.averaged(len(embeds)), concept, ends,
                                          tuple(config.attention_loss_weights))
                    (gradient,) = torch.autograd.grad(loss, [current])
                    gradient = gradient * concept.any(1)[:, None, None]  # prompts without the concept stay as they are
                    current = current - config.optimization_scale * factor * gradient.to(current.dtype)
        finally:
            for p in trainable:
                p.requires_grad_(True)
        return current.detach()

    @torch.no_grad()
    def __call__(self, prompt=None, height=None, width=None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt=None, num_images_per_prompt: int = 1, generator=None, latents=None,
                 prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=None, clip_skip=None, **kwargs):
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        passthrough = dict(height=height, width=width, num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, output_type=output_type,
                           return_dict=return_dict, clip_skip=clip_skip, **kwargs)
        if prompt is None or not self.config.suppressed_words:
            if prompt is None and self.config.suppressed_words:
                logger.warning("SEOT reads the prompt's words: with prompt_embeds nothing is suppressed")
            return super().__call__(prompt, negative_prompt=negative_prompt, latents=latents, generator=generator,
                                    num_images_per_prompt=num_images_per_prompt, prompt_embeds=prompt_embeds,
                                    callback_on_step_end=callback_on_step_end,
                                    callback_on_step_end_tensor_inputs=tensor_inputs, **passthrough)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self._execution_device
        input_ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt").input_ids.repeat_interleave(num_images_per_prompt, 0)
        cfg = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        embeds, negative = self.encode_prompt(prompts, device, num_images_per_prompt, cfg, negative_prompt,
                                              clip_skip=clip_skip)
        suppressed, concept, ends = suppressed_embeddings(self.tokenizer, self.suppression, input_ids, embeds)
        rows = len(embeds)
        start, end = self._step_range(num_inference_steps)
        optimize = bool(concept.any()) and end > start
        if optimize:  # the unsuppressed image beside the suppressed one, from the same noise (the official setup)
            if latents is None:
                shape = (rows, self.unet.config.in_channels,
                         (height or self.unet.config.sample_size * self.vae_scale_factor) // self.vae_scale_factor,
                         (width or self.unet.config.sample_size * self.vae_scale_factor) // self.vae_scale_factor)
                latents = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype)
            latents = torch.cat([latents, latents])
            generator = generator * 2 if isinstance(generator, list) else generator
            first, negative_first = torch.cat([embeds, embeds]), torch.cat([negative, negative]) if cfg else None
        else:
            first, negative_first = embeds, negative
        if start == 0:
            first = torch.cat([first[:-rows], suppressed])

        def suppress(pipeline, step, timestep, callback_kwargs):
            following = step + 1  # the step these embeddings will condition
            outputs = {}
            if start <= following < pipeline.num_timesteps:
                conditioning = suppressed
                if optimize and following < end:
                    current = callback_kwargs["latents"]
                    conditioning = self._optimized(embeds, suppressed, current[:rows], current[rows:], following,
                                                   concept, ends)
                all_embeds = callback_kwargs["prompt_embeds"]
                outputs["prompt_embeds"] = torch.cat([all_embeds[:-rows], conditioning])
            if callback_on_step_end is not None:
                outputs.update(callback_on_step_end(pipeline, step, timestep, {**callback_kwargs, **outputs}))
            return outputs

        result = super().__call__(
            prompt_embeds=first, negative_prompt_embeds=negative_first, latents=latents, generator=generator,
            num_images_per_prompt=1,
            callback_on_step_end=suppress,
            callback_on_step_end_tensor_inputs=sorted({*tensor_inputs, "latents", "prompt_embeds"}), **passthrough)
        if not optimize:
            return result
        images, nsfw = result if not return_dict else (result.images, result.nsfw_content_detected)
        images, nsfw = images[rows:], nsfw[rows:] if nsfw is not None else None
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw) if return_dict \
            else (images, nsfw)
