"""SEOT at inference: what its StableDiffusion and StableDiffusionXL pipelines share (pipeline_seot.py,
pipeline_seot_xl.py). Suppress a concept named in the prompt, no training.

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

SDXL reads two text encoders' states side by side and the second one's pooled embedding: SWR runs
on each encoder's states separately (the official SVD is within one encoder's space), and ITO moves
those states, as on SD 1.x. The pooled embedding is left as it is: shrinking it as SWR shrinks a
one-column matrix (p·e^(−α‖p‖), near zero) suppressed less on the SDXL shapes model (UA circle 0.35
vs 0.40, red 0.00 vs 0.05 with it kept; `sd-erase evaluate --suite shapes`, 8 images per prompt).

A prompt that does not contain a suppressed word is left as it is: SEOT suppresses what a prompt
names. Words are matched as token sequences of the pipeline's tokenizer ("circle" does not match
"circles": list both). This file and the pipeline files import only torch and diffusers, so an
output folder that carries one as `pipeline.py` beside this file loads with
`DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT, trust_remote_code=True)`.
"""

import dataclasses
import inspect
import math

import torch
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)

# Settings the SEOT pipelines keep in model_index.json (a stock pipeline ignores them), with their defaults.
DEFAULT_SUPPRESSION = {"suppressed_words": [], "suppression_alpha": 1.0, "suppression_start": 0.2,
                       "optimization_iterations": 10, "optimization_end": 0.4, "optimization_scale": 20.0,
                       "attention_loss_weights": [1.0, -0.5, 1.0, -0.5]}
SUPPRESSION_SETTINGS = tuple(DEFAULT_SUPPRESSION)
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


def text_parts(pipeline) -> list[tuple]:
    """(tokenizer, feature width) of each text encoder whose states the UNet reads side by side."""
    encoders = [(pipeline.tokenizer, pipeline.text_encoder)]
    if getattr(pipeline, "text_encoder_2", None) is not None:
        encoders.append((pipeline.tokenizer_2, pipeline.text_encoder_2))
    return [(tokenizer, encoder.config.hidden_size) for tokenizer, encoder in encoders]


def suppressed_conditioning(pipeline, settings: dict, prompts: list[str], embeds: torch.Tensor, repeats: int = 1):
    """SWR on the token states of `prompts` (each `repeats` times, as `embeds` holds them), each text
    encoder's part of `embeds` on its own. Returns the suppressed states, and the concept's token
    positions and the end-of-text positions (of the first tokenizer) that ITO's loss reads."""
    parts, start, found = [], 0, []
    for tokenizer, width in text_parts(pipeline):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.repeat_interleave(repeats, 0)
        words = [tokenizer(w, add_special_tokens=False).input_ids for w in settings["suppressed_words"]]
        concept = word_positions(ids, [w for w in words if w]).to(embeds.device)
        ends = end_positions(ids, tokenizer.eos_token_id).to(embeds.device)
        parts.append(soft_weighted_regularization(embeds[..., start:start + width], concept, ends,
                                                  settings["suppression_alpha"]))
        found.append((concept, ends))
        start += width
    return torch.cat(parts, -1), *found[0]


def suppression_of(pipeline) -> dict | None:
    """The SEOT settings a pipeline applies (an SEOT pipeline's, or those an in-memory erase attached), else None."""
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


class SuppressEOTMixin:
    """Sampling that suppresses: what the SEOT pipelines (a StableDiffusionPipeline and a
    StableDiffusionXLPipeline subclass) add to their parent. A subclass calls `register_suppression`
    in its __init__ and says how it encodes prompts (`_encode`) and what else its UNet reads
    (`_added_conditions`)."""

    def register_suppression(self, **settings) -> None:
        """Keep the settings in the config (model_index.json); None takes the default."""
        self.register_to_config(**{name: DEFAULT_SUPPRESSION[name] if value is None else value
                                   for name, value in settings.items()})

    @property
    def suppression(self) -> dict:
        return {name: self.config[name] for name in SUPPRESSION_SETTINGS}

    def _encode(self, prompts: list[str], device, count: int, cfg: bool, negative_prompt, kwargs: dict) -> dict:
        """The parent's prompt encoding, as the keyword arguments its __call__ takes (prompt_embeds, ...)."""
        raise NotImplementedError

    def _added_conditions(self, callback_kwargs: dict, rows: int) -> dict | None:
        """The UNet's added conditions of the last `rows` rows of the batch (SDXL), None where it reads none."""
        return None

    def _step_range(self, steps: int) -> tuple[int, int]:
        """First suppressed step, and first step after optimization, of `steps` sampling steps."""
        config = self.config
        start = math.ceil(config.suppression_start * steps)
        end = math.ceil(config.optimization_end * steps) if config.optimization_iterations > 0 else start
        return start, max(start, end)

    def _optimized(self, embeds, start_embeds, latents, erase_latents, step: int, concept, ends, added=None):
        """ITO at sampling step `step`: the suppressed embeddings after the official gradient steps
        (`added`: the UNet's added conditions of these rows, SDXL)."""
        config, unet = self.config, self.unet
        t = self.scheduler.timesteps[step]
        factor = math.sqrt(torch.linspace(1.0, 0.1, len(self.scheduler.timesteps))[step].item())
        trainable = [p for p in unet.parameters() if p.requires_grad]
        unet.requires_grad_(False)  # gradients of the embeddings only
        try:
            with AttentionMaps(unet) as maps, torch.enable_grad():
                with torch.no_grad():
                    unet(self.scheduler.scale_model_input(latents, t), t, encoder_hidden_states=embeds,
                         added_cond_kwargs=added)
                original = maps.averaged(len(embeds))
                current = start_embeds
                for _ in range(config.optimization_iterations):
                    current = current.detach().requires_grad_(True)
                    unet(self.scheduler.scale_model_input(erase_latents, t), t, encoder_hidden_states=current,
                         added_cond_kwargs=added)
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
    def __call__(self, prompt=None, negative_prompt=None, num_images_per_prompt: int = 1, generator=None,
                 latents=None, prompt_embeds=None, return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=None, **kwargs):
        """The parent pipeline's __call__ (same arguments and defaults), suppressing where a prompt names
        the concept."""
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        if prompt is None or not self.config.suppressed_words:
            if prompt is None and self.config.suppressed_words:
                logger.warning("SEOT reads the prompt's words: with prompt_embeds nothing is suppressed")
            return super().__call__(prompt, negative_prompt=negative_prompt, latents=latents, generator=generator,
                                    num_images_per_prompt=num_images_per_prompt, prompt_embeds=prompt_embeds,
                                    return_dict=return_dict, callback_on_step_end=callback_on_step_end,
                                    callback_on_step_end_tensor_inputs=tensor_inputs, **kwargs)
        parent = inspect.signature(super().__call__).parameters
        for name in ("guidance_scale", "num_inference_steps", "height", "width", "clip_skip"):
            kwargs.setdefault(name, parent[name].default)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self._execution_device
        cfg = kwargs["guidance_scale"] > 1 and self.unet.config.time_cond_proj_dim is None
        encoded = self._encode(prompts, device, num_images_per_prompt, cfg, negative_prompt, kwargs)
        embeds = encoded["prompt_embeds"]
        suppressed, concept, ends = suppressed_conditioning(self, self.suppression, prompts, embeds,
                                                            num_images_per_prompt)
        rows = len(embeds)
        start, end = self._step_range(kwargs["num_inference_steps"])
        optimize = bool(concept.any()) and end > start
        if optimize:  # the unsuppressed image beside the suppressed one, from the same noise (the official setup)
            if latents is None:
                size = self.unet.config.sample_size * self.vae_scale_factor
                shape = (rows, self.unet.config.in_channels, (kwargs["height"] or size) // self.vae_scale_factor,
                         (kwargs["width"] or size) // self.vae_scale_factor)
                latents = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype)
            latents = torch.cat([latents, latents])
            generator = generator * 2 if isinstance(generator, list) else generator
            encoded = {name: None if value is None else torch.cat([value, value]) for name, value in encoded.items()}
        if start == 0:
            encoded["prompt_embeds"] = torch.cat([encoded["prompt_embeds"][:-rows], suppressed])

        def suppress(pipeline, step, timestep, callback_kwargs):
            following = step + 1  # the step these embeddings will condition
            outputs = {}
            if start <= following < pipeline.num_timesteps:
                conditioning = suppressed
                if optimize and following < end:
                    current = callback_kwargs["latents"]
                    added = self._added_conditions(callback_kwargs, rows)
                    conditioning = self._optimized(embeds, suppressed, current[:rows], current[rows:], following,
                                                   concept, ends, added)
                outputs["prompt_embeds"] = torch.cat([callback_kwargs["prompt_embeds"][:-rows], conditioning])
            if callback_on_step_end is not None:
                outputs.update(callback_on_step_end(pipeline, step, timestep, {**callback_kwargs, **outputs}))
            return outputs

        result = super().__call__(
            **encoded, latents=latents, generator=generator, num_images_per_prompt=1, return_dict=return_dict,
            callback_on_step_end=suppress,
            callback_on_step_end_tensor_inputs=sorted({*tensor_inputs, *self._callback_tensor_inputs}), **kwargs)
        if not optimize:
            return result
        # the suppressed half only
        if not return_dict:
            return tuple(None if value is None else value[rows:] for value in result)
        return type(result)(**{field.name: None if getattr(result, field.name) is None
                               else getattr(result, field.name)[rows:] for field in dataclasses.fields(result)})
