"""Shapes-world metrics: generate with fixed seeds, judge, and score an erasure.

Protocol (recorded with every result): each prompt of `shapes.prompts()` (every object × every
style word, synonyms included), `images_per_prompt` images with per-image seeds, DDIM
`num_inference_steps` steps, classifier-free guidance `guidance_scale`.

- UA  (unlearning accuracy): share of images from prompts naming the concept (or a synonym) in
  which the judge does not see the concept. Several concepts erased together (all objects or all
  colours): images naming any of them, each judged for the one it names; `UA_by_concept` per concept.
- IRA (in-domain retain accuracy): judge accuracy on the concept's attribute (object or style)
  for prompts without the concept.
- CRA (cross-domain retain accuracy): judge accuracy on the other attribute, same prompts.
- FID (and KID) between the base model's and this model's images for prompts without the
  concept, on the judge's 64-d features (torchmetrics with a custom extractor).
"""

from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from ..erasure.config import concept_list
from ..erasure.diffusion import seeded_generator
from ..erasure.model_io import weights_fingerprint
from ..pipelines.suppress_eot import suppression_of

from .judge import JudgeFeatures
from .shapes import Prompt, canonical_style, concept_kind, prompts
from .utility import fid_kid


@dataclass
class Protocol:
    images_per_prompt: int = 8
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    seed: int = 0
    template_ids: tuple = (0,)


@torch.no_grad()
def generate(pipeline, prompt_list: list[Prompt], protocol: Protocol, batch_size: int = 90,
             show_progress: bool = True) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1], `images_per_prompt` per prompt in order; each image's seed
    depends only on (seed, prompt, index), so batching does not change the images."""
    jobs = [(p.text, k) for p in prompt_list for k in range(protocol.images_per_prompt)]
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    original, pipeline.scheduler = pipeline.scheduler, scheduler
    pipeline.set_progress_bar_config(disable=True)
    images = []
    try:
        for start in tqdm(range(0, len(jobs), batch_size), desc="generating", disable=not show_progress):
            batch = jobs[start:start + batch_size]
            images.append(pipeline(
                prompt=[text for text, _ in batch], num_inference_steps=protocol.num_inference_steps,
                guidance_scale=protocol.guidance_scale, output_type="pt",
                generator=[seeded_generator(protocol.seed, text, k) for text, k in batch]).images.cpu())
    finally:
        pipeline.scheduler = original
    return torch.cat(images).float().clamp(0, 1)


# The base model's images by (weights, pipeline class and suppression, protocol, prompts): evaluating
# several erasures of one base in a process (compare_methods, the concept matrix, tests) makes them once.
_BASE_IMAGES: dict = {}
_BASE_IMAGES_KEPT = 8


def base_images(pipeline, prompt_list: list[Prompt], protocol: Protocol, show_progress: bool = True) -> torch.Tensor:
    """`generate`'s images of the base model, made once per process for the same weights and protocol."""
    key = (weights_fingerprint(pipeline), type(pipeline).__name__, repr(suppression_of(pipeline)),
           repr(asdict(protocol)), tuple(p.text for p in prompt_list))
    if key not in _BASE_IMAGES:
        if len(_BASE_IMAGES) >= _BASE_IMAGES_KEPT:
            _BASE_IMAGES.pop(next(iter(_BASE_IMAGES)))
        _BASE_IMAGES[key] = generate(pipeline, prompt_list, protocol, show_progress=show_progress)
    return _BASE_IMAGES[key].clone()  # callers may change theirs


def prompt_fidelity(pipeline, judge, protocol: Protocol = Protocol(), show_progress: bool = False) -> dict:
    """Share of images whose object, style, and both, the judge finds as the prompt asked."""
    prompt_list = prompts(protocol.template_ids)
    objects, styles = judge.classify(generate(pipeline, prompt_list, protocol, show_progress=show_progress))
    expected = [p for p in prompt_list for _ in range(protocol.images_per_prompt)]
    hits_object = [o == p.object for o, p in zip(objects, expected)]
    hits_style = [s == p.style for s, p in zip(styles, expected)]
    return {"object": sum(hits_object) / len(expected), "style": sum(hits_style) / len(expected),
            "both": sum(a and b for a, b in zip(hits_object, hits_style)) / len(expected),
            "images": len(expected), "protocol": asdict(protocol)}


def erased_concepts(concept: str | list[str]) -> tuple[list[str], str]:
    """The erased concepts as a list, and their kind: several must all be objects or all colours,
    so that in-domain and cross-domain retain accuracy keep their meaning."""
    concepts = concept_list(concept)
    kinds = {concept_kind(c) for c in concepts}
    if len(kinds) > 1:
        raise ValueError(f"{', '.join(concepts)} mix objects and colours: evaluate the objects and the colours "
                         "of an erase separately")
    return concepts, kinds.pop()


def _named(prompt: Prompt, concepts: list[str]) -> str | None:
    """The erased concept `prompt` names, if any."""
    return next((c for c in concepts if (prompt.object == c if concept_kind(c) == "object"
                                         else prompt.style == canonical_style(c))), None)


def score(prompt_list: list[Prompt], images_per_prompt: int, objects: list[str], styles: list[str],
          concept: str | list[str]) -> dict:
    """UA / IRA / CRA of judged images (in prompt order) for an erased `concept` (or several, of one kind)."""
    concepts, kind = erased_concepts(concept)
    expected = [p for p in prompt_list for _ in range(images_per_prompt)]
    judged = {"object": objects, "style": styles}
    other = "style" if kind == "object" else "object"
    forget = [(i, c if kind == "object" else canonical_style(c)) for i, p in enumerate(expected)
              if (c := _named(p, concepts))]
    retain = [i for i, p in enumerate(expected) if _named(p, concepts) is None]
    ua, by_concept = {}, {}  # per concept word, so that synonyms are reported on their own
    for i, target in forget:
        word = target if kind == "object" else next(w for w in expected[i].text.split() if canonical_style(w) == target)
        ua.setdefault(word, []).append(judged[kind][i] != target)
        by_concept.setdefault(target, []).append(judged[kind][i] != target)
    return {
        "UA": sum(judged[kind][i] != target for i, target in forget) / len(forget),
        "UA_by_word": {w: sum(v) / len(v) for w, v in ua.items()},
        **({"UA_by_concept": {c: sum(v) / len(v) for c, v in by_concept.items()}} if len(concepts) > 1 else {}),
        "IRA": sum(judged[kind][i] == getattr(expected[i], kind) for i in retain) / len(retain),
        "CRA": sum(judged[other][i] == getattr(expected[i], other) for i in retain) / len(retain),
        "forget_images": len(forget),
        "retain_images": len(retain),
    }


def evaluate_erasure(base_pipeline, erased_pipeline, judge, concept: str | list[str], protocol: Protocol = Protocol(),
                     show_progress: bool = True) -> tuple[dict, dict]:
    """Metrics of the base and the erased model, side by side, on the same prompts and seeds.

    Returns (metrics, images) where images maps "base"/"erased" to (N, 3, 32, 32) tensors in
    prompt order, prompts naming the concept first.
    """
    concepts, kind = erased_concepts(concept)  # fail early on a concept the world does not have
    prompt_list = sorted(prompts(protocol.template_ids), key=lambda p: _named(p, concepts) is None)
    images, results = {}, {}
    for name, pipeline in (("base", base_pipeline), ("erased", erased_pipeline)):
        images[name] = (base_images if name == "base" else generate)(pipeline, prompt_list, protocol,
                                                                       show_progress=show_progress)
        objects, styles = judge.classify(images[name])
        results[name] = score(prompt_list, protocol.images_per_prompt, objects, styles, concept)
    retain_rows = [i for i, p in enumerate(p for p in prompt_list for _ in range(protocol.images_per_prompt))
                   if _named(p, concepts) is None]
    results["base"].update(FID=0.0, KID_mean=0.0)  # the reference itself
    distance = fid_kid(images["base"][retain_rows], images["erased"][retain_rows], feature=JudgeFeatures(judge))
    results["erased"].update(FID=distance["FID"], KID_mean=distance["KID_mean"], KID_std=distance["KID_std"])
    metrics = {"suite": "shapes", "concept": concept, "kind": kind, "protocol": asdict(protocol),
               "prompts": [p.text for p in prompt_list], **results}
    return metrics, images
