"""Noise, timesteps and text embeddings: the diffusion primitives every method shares."""

import hashlib
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

from ..pipelines.suppress_eot import suppressed_conditioning, suppression_of
from .model_io import is_sdxl

# Samplers by the short names the CLI takes (erasure.config.Sampler); "dpm" (DPM-Solver++ 2M) needs the
# fewest steps. LMS is left out: diffusers' LMSDiscreteScheduler needs scipy, which is not a dependency.
SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler,
              "dpm": DPMSolverMultistepScheduler}


def swapped_scheduler(pipeline, name: str):
    """The sampler `name` configured from the pipeline's own scheduler (same noise schedule)."""
    return SCHEDULERS[name].from_config(pipeline.scheduler.config)


def seeded_generator(seed: int, *keys) -> torch.Generator:
    """A CPU generator for (seed, keys): the randomness of a step depends only on its position.

    This makes a resumed run draw exactly what the uninterrupted run drew, and lets several
    processes draw the same global batch and each take its share.
    """
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def epoch_indices(n: int, count: int, start: int, seed: int, name: str) -> torch.Tensor:
    """Sample positions start..start+count-1 of an endless sequence of shuffled epochs over n items."""
    positions = torch.arange(start, start + count)
    out = torch.empty(count, dtype=torch.long)
    for epoch in positions.div(n, rounding_mode="floor").unique().tolist():
        order = torch.randperm(n, generator=seeded_generator(seed, name, "epoch", epoch))
        selected = positions // n == epoch
        out[selected] = order[positions[selected] % n]
    return out


def text_encoders(pipeline) -> list[tuple]:
    """The pipeline's (tokenizer, text encoder) pairs: one for SD 1.x/2.x, two for SDXL."""
    pairs = [(pipeline.tokenizer, pipeline.text_encoder)]
    if is_sdxl(pipeline):
        pairs.append((pipeline.tokenizer_2, pipeline.text_encoder_2))
    return pairs


def token_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """`prompts` as the pipeline tokenizes them for its text encoder: padded (and cut) to its length."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encoder_inputs(pipeline, prompts: list[str], device) -> list[torch.Tensor]:
    """Each text encoder's token ids of `prompts` on `device`, the encoders moved there."""
    inputs = []
    for tokenizer, encoder in text_encoders(pipeline):
        encoder.to(device)
        inputs.append(token_ids(tokenizer, prompts).to(device))
    return inputs


def token_states(pipeline, ids_per_encoder: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The token states the UNet cross-attends to, (n, length, width), and SDXL's pooled text embedding
    (None otherwise), from token ids (one tensor per text encoder, on its device), with the gradient
    where the encoders have one: the text encoder's last layer for SD 1.x/2.x; for SDXL both encoders'
    penultimate layers side by side and the second one's pooled projection, as
    StableDiffusionXLPipeline.encode_prompt makes them."""
    if not is_sdxl(pipeline):
        return pipeline.text_encoder(ids_per_encoder[0])[0], None
    hidden = []
    for (_, encoder), ids in zip(text_encoders(pipeline), ids_per_encoder):
        output = encoder(ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    return torch.cat(hidden, -1), output[0]


def unet_conditioning(pipeline, ids_per_encoder: list[torch.Tensor]) -> torch.Tensor:
    """What every method passes to `unet(x, t, states)`: `token_states`, and for SDXL one more row
    holding the added conditions (the pooled embedding and the size ids; `sdxl_conditions` hands them
    to the UNet)."""
    hidden, pooled = token_states(pipeline, ids_per_encoder)
    if pooled is None:
        return hidden
    size = float(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)
    # SDXL's time ids: original size, crop top-left, target size (the model's own resolution, uncropped)
    time_ids = pooled.new_tensor([size, size, 0.0, 0.0, size, size]).expand(len(pooled), -1)
    row = torch.cat([pooled, time_ids, pooled.new_zeros(len(pooled), hidden.shape[-1] - pooled.shape[-1] - 6)], -1)
    return torch.cat([hidden, row[:, None]], 1)


class TextConditioning(torch.nn.Module):
    """The pipeline's text encoder(s) as one module whose forward is `unet_conditioning`: what a method
    that trains the text encoders (AdvUnlearn) hands to accelerate, so that its calls run through the
    prepared (multi-process) wrapper whichever encoders the family has."""

    def __init__(self, pipeline):
        super().__init__()
        self.encoders = torch.nn.ModuleList(encoder for _, encoder in text_encoders(pipeline))
        self.pipeline = pipeline

    def forward(self, ids_per_encoder: list[torch.Tensor]) -> torch.Tensor:
        return unet_conditioning(self.pipeline, ids_per_encoder)


@torch.no_grad()
def encode_prompts(pipeline, prompts: list[str], device, suppressed: bool = True) -> dict[str, torch.Tensor]:
    """The UNet's conditioning per unique prompt (`unet_conditioning`), computed once (the text encoders stay
    frozen): SWR-suppressed where the pipeline suppresses words (SEOT) unless `suppressed` is False.
    For SDXL the empty prompt is all zeros where the pipeline's `force_zeros_for_empty_prompt` makes it
    so at inference."""
    unique = list(dict.fromkeys(prompts))
    hidden = unet_conditioning(pipeline, encoder_inputs(pipeline, unique, device))
    suppression = suppression_of(pipeline) if suppressed else None
    if suppression:  # an SEOT pipeline conditions on the suppressed token states (SDXL: not its added row)
        tokens = pipeline.tokenizer.model_max_length
        hidden[:, :tokens] = suppressed_conditioning(pipeline, suppression, unique, hidden[:, :tokens])[0]
    if is_sdxl(pipeline) and pipeline.config.get("force_zeros_for_empty_prompt") and "" in unique:
        empty = unique.index("")  # its token states and pooled embedding, not its size ids
        hidden[empty, :-1] = 0
        hidden[empty, -1, :pipeline.text_encoder_2.config.projection_dim] = 0
    return dict(zip(unique, hidden.float()))


@contextmanager
def sdxl_conditions(pipeline):
    """While active, an SDXL UNet called as `unet(x, t, states)` with `encode_prompts`' states (one row
    more than the tokenizer's length) reads its `added_cond_kwargs` from that last row and attends to
    the rest: every method keeps the one call `unet(x, t, states)`, whatever the model. Calls with
    their own `added_cond_kwargs` (the pipeline's sampling) pass unchanged; SD 1.x/2.x: a no-op."""
    if not is_sdxl(pipeline):
        yield
        return
    length, pooled_width = pipeline.tokenizer.model_max_length, pipeline.text_encoder_2.config.projection_dim

    def unpack(module, args, kwargs):
        states = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        if kwargs.get("added_cond_kwargs") is not None or states.shape[1] != length + 1:
            return None
        row = states[:, -1]
        added = {"text_embeds": row[:, :pooled_width], "time_ids": row[:, pooled_width:pooled_width + 6]}
        return args[:2], {**kwargs, "encoder_hidden_states": states[:, :-1], "added_cond_kwargs": added}

    handle = pipeline.unet.register_forward_pre_hook(unpack, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def stack_embeddings(embeddings: dict[str, torch.Tensor], prompts: list[str]) -> torch.Tensor:
    return torch.stack([embeddings[p] for p in prompts])


def prediction_target(scheduler, latents, noise, timesteps):
    """What the UNet should predict for noised `latents`: the noise (SD 1.x), the velocity (SD 2.x
    v-models) or the clean latents (`sample`), as the model's scheduler config says."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r}: only epsilon, v_prediction and sample models can be erased")


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample (fp32), so losses do not depend on how samples are batched."""
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)


def noise_batch(generator_keys, latents_shape, num_train_timesteps):
    """Timesteps and noise, one generator per sample so batching and sharding do not change them."""
    timesteps, noise = [], []
    for keys in generator_keys:
        g = seeded_generator(*keys)
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=g))
        noise.append(torch.randn(latents_shape, generator=g))
    return torch.cat(timesteps), torch.stack(noise)


class PrefixEmbeddings:
    """While active, puts `vectors` ((k, width) or (batch, k, width)) at token positions 1..k of the text encoder's input
    embeddings, or leaves them alone while `vectors` is None (transformers' CLIPTextModel takes no
    inputs_embeds). The token ids at those positions are placeholders. Attacks and adversarial
    training put soft or projected prefix tokens before a prompt with it."""

    def __init__(self, text_encoder):
        self.layer = text_encoder.get_input_embeddings()
        self.vectors = None

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(self._replace)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _replace(self, module, inputs, output):
        if self.vectors is None:
            return output
        k = self.vectors.shape[-2]  # vectors: (k, width), or (batch, k, width) for one prefix per prompt
        return torch.cat([output[:, :1], self.vectors.to(output.dtype).expand(len(output), -1, -1), output[:, 1 + k:]], 1)


@contextmanager
def encoder_prefixes(pipeline):
    """A PrefixEmbeddings on each of the pipeline's text encoders (SDXL: both), active together; set
    each one's `vectors` in its own encoder's width."""
    with ExitStack() as active:
        yield [active.enter_context(PrefixEmbeddings(encoder)) for _, encoder in text_encoders(pipeline)]


def prefixed_token_ids(tokenizer, prompts: list[str], k: int, placeholder: int) -> torch.Tensor:
    """Token ids of `prompts` with k `placeholder` ids after the start token, padded to the text
    encoder's length: the input PrefixEmbeddings fills (the prompt loses its last k tokens if it is that long)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length - k, truncation=True,
                    return_tensors="pt").input_ids
    return torch.cat([ids[:, :1], torch.full((len(prompts), k), placeholder), ids[:, 1:]], 1)


def check_prompt_lengths(tokenizer, prompts: list[str], what: str) -> None:
    """Refuse prompts the text encoder would silently cut: the erased concept would not be what was asked."""
    from .errors import EraseError

    for prompt in prompts:
        length = len(tokenizer(prompt).input_ids)
        if length > tokenizer.model_max_length:
            raise EraseError(f"{what} {prompt[:40]!r}... is {length} tokens but the text encoder reads "
                             f"{tokenizer.model_max_length}: shorten it")
