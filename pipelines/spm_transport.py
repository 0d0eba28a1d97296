"""SPM's facilitated transport (Lyu et al., CVPR 2024): at inference each membrane acts with a weight
given by how close the prompt is to the concept it erases, so prompts far from every erased concept
pass through less changed.

The rate follows the official inference code (Con6924/SPM `infer_spm.py`, its default matching
metric `clipcos_tokenuni`): for a prompt P and a membrane erasing concepts c₁…cₙ,

    γ = max over cᵢ of max(cos(E(P), E(cᵢ)), |T(P) ∩ T(cᵢ)| / |T(cᵢ)|)

E: the token states the UNet reads, flattened over every position (padding included), T: the
prompt's token ids less the special tokens. The official code multiplies every tensor of the membrane
by γ, both factors of its low-rank product, so a membrane acts with γ²: here each membrane is a
peft adapter and its adapter weight is γ² (`set_adapters`). Deviation: with several membranes the
official code sums their factors before the product (mixing membranes); here each keeps its own
adapter and weight, the stacking the paper describes. One pipeline call is made per distinct prompt,
since a prompt's rate sets the weights of the whole call (the unconditional branch included, as in the
official code).

    pipe = StableDiffusionSPMPipeline.from_pretrained("CompVis/stable-diffusion-v1-4")
    pipe.load_membranes(["sd14-spm-snoopy", "sd14-spm-mickey"])   # `sd-erase erase --method spm` outputs
    image = pipe("a photo of a dog on a beach").images[0]        # each membrane at γ² for this prompt
"""

import json
import os

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline


def membrane_concepts(membrane: str) -> list[str]:
    """The concepts an SPM output erases, from its erasure.json (a folder, or a Hub repo's file)."""
    if os.path.isdir(membrane):
        path = os.path.join(membrane, "erasure.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(membrane, "erasure.json")
    with open(path) as f:
        record = json.load(f)
    if record.get("method") != "spm":
        raise ValueError(f"{membrane} was erased with {record.get('method')!r}, not spm: facilitated transport "
                         "weighs SPM membranes; load other adapters with load_lora_weights")
    concept = record["concept"]
    return [concept] if isinstance(concept, str) else list(concept)


class FacilitatedTransportMixin:
    """`load_membranes`, `transport_rates`, and a `__call__` that weighs each loaded membrane by its rate."""

    membranes: dict  # adapter name -> concepts

    def load_membranes(self, membranes: list[str]) -> None:
        """Load SPM outputs (folders or Hub ids holding the LoRA and erasure.json) as adapters
        `membrane_0`, `membrane_1`, …; from now on each call weighs them per prompt."""
        self.membranes = getattr(self, "membranes", None) or {}
        for membrane in membranes:
            name = f"membrane_{len(self.membranes)}"
            concepts = membrane_concepts(membrane)
            self.load_lora_weights(membrane, adapter_name=name)
            self.membranes[name] = concepts

    @torch.no_grad()
    def transport_rates(self, prompts: list[str]) -> torch.Tensor:
        """γ of each prompt (rows) for each loaded membrane (columns, in load order)."""
        from ..erasure.diffusion import encoder_inputs, token_states

        concepts = [c for names in self.membranes.values() for c in names]
        states = token_states(self, encoder_inputs(self, list(prompts) + concepts, self.device))[0].flatten(1).float()
        cosine = torch.nn.functional.cosine_similarity(states[:len(prompts), None], states[None, len(prompts):], dim=-1)
        special = set(self.tokenizer.all_special_ids)
        tokens = [set(ids) - special for ids in self.tokenizer(list(prompts) + concepts).input_ids]
        overlap = torch.tensor([[len(tokens[p] & tokens[len(prompts) + c]) / max(len(tokens[len(prompts) + c]), 1)
                                 for c in range(len(concepts))] for p in range(len(prompts))])
        per_concept = torch.maximum(cosine.cpu(), overlap)
        columns = torch.split(per_concept, [len(names) for names in self.membranes.values()], dim=1)
        return torch.stack([column.max(1).values for column in columns], 1)

    def __call__(self, prompt=None, *, generator=None, num_images_per_prompt: int = 1, **kwargs):
        if not getattr(self, "membranes", None):
            return super().__call__(prompt, generator=generator, num_images_per_prompt=num_images_per_prompt, **kwargs)
        if prompt is None:
            raise ValueError("facilitated transport weighs the membranes by the prompt's text: pass `prompt`, "
                             "not only `prompt_embeds`")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        rates = self.transport_rates(list(dict.fromkeys(prompts)))
        outputs, order = [], []
        for row, text in enumerate(dict.fromkeys(prompts)):
            indices = [i for i, p in enumerate(prompts) if p == text]
            images = [i * num_images_per_prompt + k for i in indices for k in range(num_images_per_prompt)]
            self.set_adapters(list(self.membranes), (rates[row] ** 2).tolist())
            call = {key: _take(value, indices, len(prompts)) for key, value in kwargs.items()}
            outputs.append(super().__call__([text] * len(indices), generator=_take(generator, images,
                                                                                 len(prompts) * num_images_per_prompt),
                                            num_images_per_prompt=num_images_per_prompt, **call))
            order += images
        return _merged(outputs, order)


def _take(value, indices: list[int], count: int):
    """The entries of a per-prompt (or per-image) list argument at `indices`; anything else as it is."""
    if isinstance(value, list) and len(value) == count:
        return [value[i] for i in indices]
    if isinstance(value, torch.Tensor) and value.ndim > 0 and len(value) == count:
        return value[indices]
    return value


def _merged(outputs: list, order: list[int]):
    """One pipeline output from per-prompt outputs, images back in the order they were asked for."""
    from dataclasses import fields

    position = {image: n for n, image in enumerate(order)}
    merged = {}
    for field in fields(outputs[0]):
        first = getattr(outputs[0], field.name)
        if first is None:
            merged[field.name] = None
            continue
        values = [v for out in outputs for v in getattr(out, field.name)]
        values = [values[position[i]] for i in range(len(order))]
        if isinstance(first, torch.Tensor):
            values = torch.stack(values)
        elif not isinstance(first, list):  # numpy
            import numpy

            values = numpy.stack(values)
        merged[field.name] = values
    return type(outputs[0])(**merged)


class StableDiffusionSPMPipeline(FacilitatedTransportMixin, StableDiffusionPipeline):
    """StableDiffusionPipeline that weighs loaded SPM membranes per prompt (facilitated transport)."""


class StableDiffusionXLSPMPipeline(FacilitatedTransportMixin, StableDiffusionXLPipeline):
    """StableDiffusionXLPipeline that weighs loaded SPM membranes per prompt (facilitated transport)."""
