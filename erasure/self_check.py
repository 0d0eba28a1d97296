"""Did the erasure work? A check every erase runs on its own result, with no judge or classifier.

Concept margin (a diffusion-classifier margin). Before the method runs, the base model synthesizes
images of the concept from its prompts, on a seed stream of their own (the method never trains on
them). Each is noised at fixed timesteps with fixed noise, and the denoising error is measured
under the concept's prompt and under its anchor, the prompt the concept is steered to (a
misaligned prompt where the method or the model profile has one, else the retain prompt):

    gain(model, prompt) = model's error(empty prompt) − model's error(prompt)
    margin(model)       = gain(model, concept prompt) − gain(base, anchor prompt)

The empty prompt is the reference input, the same for both models: it is encoded once, by the base
model's text encoder(s). What the erased UNet makes of it measures how much the UNet changed
everywhere; a method that edits the text encoder (SLUG, AdvUnlearn) changes the empty prompt's own
encoding too, and against that moving reference SLUG's circle erase on the shapes model (judge UA 1.00)
kept 106% of its margin (51% against the fixed one).

How much more the concept's prompt helps the model denoise the concept's images than the anchor
helped the base model. The base model's margin is positive; the check reports how much of it the
erased model keeps: 1 unchanged, 0 when the concept prompt helps no more than the base's anchor
did, below 0 less. Measuring the concept prompt by its gain over the same model's empty prompt
keeps a model that got worse everywhere from looking erased (SalUn's official settings on the
shapes model raise every error by ~12%), and holding the anchor at the base's keeps a moving
anchor from hiding an erasure (erasing red onto green makes "green" explain red images worse
too). The erased model's own anchor error is recorded, not used.

Retain drift: the relative change, erased vs base, of the denoising error of held-out images of
the retain prompts under their own prompts: what the erasure cost elsewhere.

The same latents, noise and timesteps serve both models, so the comparison is paired and the
numbers are deterministic for a seed. The thresholds below were set against the shapes world's
judge (README, "Does the check agree with the judge").
"""

from dataclasses import dataclass, replace

import torch
from diffusers import DDPMScheduler

from ..pipelines.suppress_eot import suppression_of
from .data import data_resolution, synthesize_latents
from .diffusion import encode_prompts, per_sample_mse, prediction_target, seeded_generator
from .concepts import clear_of
from .prompts import preset_prompts

MAX_REMAINING = 0.5  # erased when at most this share of the base model's concept margin remains
MIN_BASE_MARGIN = 0.01  # below this share of the anchor's error the base model does not tie prompt and concept
MIN_LEVEL_SHARE = 0.05  # a timestep whose base margin is below this share of the whole says little on its own
RETAIN_BUDGET = 0.10  # retain drift within which the rest of the model counts as kept
TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)  # shares of the training schedule at which every image is noised
UNMOVED = 0.9  # --until-erased: a round that kept more of the margin barely moved the concept
EXIT_NOT_ERASED = 3  # `sd-erase erase` exits with this when the check finds the concept still there


@dataclass
class CheckPrompts:
    concept: list[str]
    anchor: list[str]  # paired with `concept`, cycled
    retain: list[str]


def unknown_words(tokenizer, prompts: list[str]) -> list[str]:
    """Words of `prompts` the model's tokenizer never learned: it spells them out letter by letter
    (e.g. 'photo' for a model trained on captions without it). The text encoder cannot read them,
    so prompts made of them say nothing about the model."""
    words = sorted({w for p in prompts for w in p.lower().split() if w.isalpha() and len(w) >= 3})
    return [w for w in words if len(tokenizer.tokenize(w)) == len(w)]


def check_prompts(config, profile, erased_elsewhere: frozenset = frozenset()) -> CheckPrompts:
    """The concept's prompts, their anchors and retain prompts: the config's own where it has them,
    else the model profile's for the concept, else the preset of erasure/prompts.py; cleared of
    `erased_elsewhere`, the prompts of other concepts erased in the same run (erasure/concepts.py)."""
    preset = preset_prompts(config.concept)
    from_profile = profile.concepts.get(config.concept.strip(), {}) if profile else {}

    def pick(name, fallback):
        return getattr(config, name, None) or from_profile.get(name) or fallback

    retain = pick("retain_prompts", preset.retain)
    kept = [p for p in retain if p not in erased_elsewhere] or preset.retain
    anchors = clear_of(pick("misaligned_prompts", retain), kept, erased_elsewhere, "misaligned_prompts", config.concept)
    return CheckPrompts(pick("forget_prompts", preset.forget), anchors, kept)


def self_check(pipeline, configs: list, profile, session):
    """The check of an erase of the concepts of `configs` (one config per concept)."""
    if len(configs) == 1:
        return SelfCheck(pipeline, configs[0], profile, session)
    return ConceptsCheck(pipeline, configs, profile, session)


class SelfCheck:
    """Held-out data and the base model's errors, taken before the method changes the pipeline."""

    def __init__(self, pipeline, config, profile, session, erased_elsewhere: frozenset = frozenset()):
        self.prompts = check_prompts(config, profile, erased_elsewhere)
        self.device = session.accelerator.device
        self.autocast = session.accelerator.autocast
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        resolution = data_resolution(pipeline, config)
        self.images = config.self_check_images
        batch_size = getattr(config, "synthesis_batch_size", None) or 8
        self.call_size = 2 * batch_size  # the memory the user allowed synthesis (two samples per image with guidance)
        synthesis = dict(num_images=self.images, seed=config.seed, resolution=resolution, guidance_scale=7.5,
                         num_inference_steps=getattr(config, "synthesis_steps", None) or 25, batch_size=batch_size,
                         scheduler=getattr(config, "synthesis_scheduler", None), model_key=session.model_key,
                         cache_dir=config.cache_dir, autocast=self.autocast, show_progress=False, stream="self-check")
        pipeline.to(self.device)
        with session.accelerator.main_process_first():  # the main process fills the cache; the others read it
            self.concept = synthesize_latents(pipeline, self.prompts.concept, **synthesis)
            self.retain = synthesize_latents(pipeline, self.prompts.retain, **synthesis)
        self.anchors = [self.prompts.anchor[self.prompts.concept.index(p) % len(self.prompts.anchor)]
                        for p in self.concept.prompts]
        self.seed = config.seed
        self.unknown = unknown_words(pipeline.tokenizer, self.prompts.concept + self.prompts.anchor)
        self.reference = encode_prompts(pipeline, [""], self.device, suppressed=False)[""]
        self.base = self.errors(pipeline)
        self.base_margin = self.base["empty_prompt"] - self.base["concept_prompt"] - self.anchor_gain

    @property
    def anchor_gain(self) -> float:
        return self.base["empty_prompt"] - self.base["anchor_prompt"]

    def cannot_tell(self) -> str | None:
        """Why no verdict of this check can mean anything (decided by the base model alone), or None."""
        if self.unknown:
            return _unknown_words_note(self.unknown)
        if self.base_margin <= MIN_BASE_MARGIN * self.base["anchor_prompt"]:
            return _untied_note(self.base_margin)
        return None

    @torch.no_grad()
    def _mean_errors(self, unet, embeddings_at, latents, prompt_sets: dict[str, list[str]],
                     name: str) -> dict[str, list[float]]:
        """Mean denoising error of `latents` under each set of prompts (one prompt per latent), at each
        of the fixed timesteps, with fixed noise: every set sees the same noised latents.
        `embeddings_at(share)` gives the prompt embeddings at a timestep share.

        Every (image, timestep, prompt set) triple is one sample of a few large UNet calls, of at most
        `call_size` samples: on a small model the per-call overhead, not the samples, was the cost."""
        T = self.noise_scheduler.config.num_train_timesteps
        noised = {}  # (image, level) -> (noisy latent, target): the same for every prompt set
        for level, share in enumerate(TIMESTEPS):
            t = torch.full((len(latents),), int(share * T), dtype=torch.long)
            noise = torch.stack([torch.randn(latents.shape[1:], generator=seeded_generator(self.seed, "self-check",
                                                                                          name, i, share))
                                 for i in range(len(latents))])
            noisy = self.noise_scheduler.add_noise(latents, noise, t)
            target = prediction_target(self.noise_scheduler, latents, noise, t)
            noised.update({(i, level): (noisy[i], target[i]) for i in range(len(latents))})
        samples = [(i, level, key) for i in range(len(latents)) for level in range(len(TIMESTEPS)) for key in prompt_sets]
        totals = {key: [0.0] * len(TIMESTEPS) for key in prompt_sets}
        for start in range(0, len(samples), self.call_size):
            chunk = samples[start:start + self.call_size]
            noisy = torch.stack([noised[i, level][0] for i, level, _ in chunk]).to(self.device)
            target = torch.stack([noised[i, level][1] for i, level, _ in chunk]).to(self.device)
            t = torch.tensor([int(TIMESTEPS[level] * T) for _, level, _ in chunk], device=self.device)
            embeddings = torch.stack([embeddings_at(TIMESTEPS[level])[prompt_sets[key][i]] for i, level, key in chunk])
            with self.autocast():
                prediction = unet(noisy, t, embeddings).sample
            for (_, level, key), error in zip(chunk, per_sample_mse(prediction, target).tolist()):
                totals[key][level] += error
        return {key: [total / len(latents) for total in level_totals] for key, level_totals in totals.items()}

    def errors(self, pipeline) -> dict:
        """The errors of `pipeline` as it is now: prompts are encoded by its own text encoder, which
        methods such as AdvUnlearn change (the empty prompt excepted: the base's encoding, see above);
        an SEOT pipeline's suppressed embeddings where it uses them (below the noise level of its
        first suppressed sampling step)."""
        prompts = self.prompts.concept + self.prompts.anchor + self.prompts.retain
        embeddings = {**encode_prompts(pipeline, prompts, self.device), "": self.reference}
        suppression = suppression_of(pipeline)
        if suppression:
            unsuppressed = {**encode_prompts(pipeline, prompts, self.device, suppressed=False), "": self.reference}
            embeddings_at = lambda share: unsuppressed if share > 1 - suppression["suppression_start"] else embeddings
        else:
            embeddings_at = lambda share: embeddings
        by_level = {**self._mean_errors(pipeline.unet, embeddings_at, self.concept.latents, {
            "concept_prompt": self.concept.prompts, "anchor_prompt": self.anchors,
            "empty_prompt": [""] * len(self.anchors)}, "concept"),
            **self._mean_errors(pipeline.unet, embeddings_at, self.retain.latents, {"retain": self.retain.prompts},
                                "retain")}
        return {**{key: sum(levels) for key, levels in by_level.items()}, "by_level": by_level}

    def remaining_by_level(self, erased: dict) -> list[float | None]:
        """The share of the base margin the erased model keeps at each timestep (None where the base
        model's margin there is below MIN_LEVEL_SHARE of its margin over all of them)."""
        base, now = self.base["by_level"], erased["by_level"]
        remaining = []
        for k in range(len(TIMESTEPS)):
            anchor_gain = base["empty_prompt"][k] - base["anchor_prompt"][k]
            base_margin = base["empty_prompt"][k] - base["concept_prompt"][k] - anchor_gain
            margin = now["empty_prompt"][k] - now["concept_prompt"][k] - anchor_gain
            remaining.append(margin / base_margin if base_margin >= MIN_LEVEL_SHARE * self.base_margin else None)
        return remaining

    def verdict(self, pipeline) -> dict:
        """The record of the check on `pipeline` as it is now (erasure.json's `self_check`)."""
        erased = self.errors(pipeline)
        margins = {"base": self.base_margin,
                   "erased": erased["empty_prompt"] - erased["concept_prompt"] - self.anchor_gain}
        remaining = None if self.cannot_tell() else margins["erased"] / margins["base"]
        by_level, worst_level = self.remaining_by_level(erased), None
        if remaining is not None and suppression_of(pipeline):
            # conditioning that changes along the sampling steps (SEOT): a noise level where the concept
            # keeps its margin lets the image form it, so the worst level decides
            worst = max((r, share) for r, share in zip(by_level, TIMESTEPS) if r is not None)
            if worst[0] > remaining:
                remaining, worst_level = worst
        drift = erased["retain"] / self.base["retain"] - 1
        return {
            "erased": remaining is not None and remaining <= MAX_REMAINING,
            "concept_margin": margins, "margin_remaining": remaining, "margin_remaining_by_level": by_level,
            "worst_level": worst_level,
            "retain_drift": drift, "retain_kept": drift <= RETAIN_BUDGET,
            "thresholds": {"max_margin_remaining": MAX_REMAINING, "min_base_margin": MIN_BASE_MARGIN,
                           "min_level_share": MIN_LEVEL_SHARE,
                           "retain_budget": RETAIN_BUDGET},
            "errors": {"base": self.base, "erased": erased}, "unknown_words": self.unknown,
            "data": {"images": self.images, "timesteps": list(TIMESTEPS), "concept_prompts": self.prompts.concept[:8],
                     "anchor_prompts": self.prompts.anchor[:8], "retain_prompts": self.prompts.retain[:8]},
        }


class ConceptsCheck:
    """The self-check of several concepts erased together: each concept's own check, with what the
    other concepts erase left out of its anchors and retain prompts. The erase passes when every
    concept is erased and every retain set kept; the line names the worst concept."""

    def __init__(self, pipeline, configs: list, profile, session):
        erased = [frozenset(check_prompts(config, profile).concept) for config in configs]
        self.checks = {config.concept: SelfCheck(pipeline, config, profile, session,
                                                 frozenset().union(*(erased[:k] + erased[k + 1:])))
                       for k, config in enumerate(configs)}

    def cannot_tell(self) -> str | None:
        reasons = [f"for {concept!r}: {reason}" for concept, check in self.checks.items()
                   if (reason := check.cannot_tell())]
        return "; ".join(reasons) or None

    def verdict(self, pipeline) -> dict:
        per_concept = {concept: check.verdict(pipeline) for concept, check in self.checks.items()}
        untold = [c for c, v in per_concept.items() if v["margin_remaining"] is None]
        worst = untold[0] if untold else max(per_concept, key=lambda c: per_concept[c]["margin_remaining"])
        drift = max(v["retain_drift"] for v in per_concept.values())
        return {**per_concept[worst], "worst_concept": worst, "erased": all(v["erased"] for v in per_concept.values()),
                "retain_drift": drift, "retain_kept": drift <= RETAIN_BUDGET, "per_concept": per_concept}


def describe(check: dict, config=None) -> str:
    """One line for the user: erased or not, the margin, the retain drift, and (given the method's
    `config`) what to do."""
    stronger, gentler = (config.STRONGER, config.GENTLER) if config is not None else ("", "")
    drift = f"retain loss {check['retain_drift']:+.0%}"
    if not check["retain_kept"]:
        drift += f" (over the {RETAIN_BUDGET:.0%} budget" + (f": {gentler})" if gentler else ")")
    if check["margin_remaining"] is None and check.get("unknown_words"):
        return f"not checked: {_unknown_words_note(check['unknown_words'])}; {drift}"
    if check["margin_remaining"] is None:
        return f"not checked: {_untied_note(check['concept_margin']['base'])}; {drift}"
    of = f" of {check['worst_concept']!r} (the worst of {len(check['per_concept'])})" if "per_concept" in check else ""
    margin = f"concept margin{of} {check['concept_margin']['base']:.3g} → {check['concept_margin']['erased']:.3g} " \
             f"({check['margin_remaining']:.0%} remains" \
             + (f" at noise level {check['worst_level']:g}, the worst)" if check.get("worst_level") else ")")
    if check["erased"]:
        return f"erased: {margin}, {drift}"
    return f"NOT erased: {margin}, {drift}" + (f" — {stronger}" if stronger else "")


def _unknown_words_note(words: list[str]) -> str:
    return (f"the model's tokenizer does not know {', '.join(map(repr, words[:5]))} from the concept's prompts, so "
            "neither the erase nor its check can mean much: give prompts in the model's own words (`forget_prompts`, "
            "`retain_prompts`, `misaligned_prompts`) or a model profile (`sd-erase profile` writes one from the model's "
            "caption template)")


def _untied_note(base_margin: float) -> str:
    return (f"the base model hardly ties the concept's prompts to its images (margin {base_margin:.3g}), so the "
            "self-check cannot tell")


def passed(check: dict) -> bool:
    return check["margin_remaining"] is not None and check["erased"] and check["retain_kept"]


def next_round(config, check: dict, tried: dict):
    """The config of the next --until-erased round after `check`, or None when there is nothing to change.

    The retain set drifting over budget: the method's narrower variant first, if it has one (SalUn:
    cross-attention only, the base model's target), since a higher rate would move the rest more;
    at a rate x10 when the concept's margin barely moved. Else, not erased: a higher learning rate
    (x10 when the margin barely moved, else x3; between the last rate that failed and the lowest
    that erased, once one has), or None when a higher rate left more of the margin than a lower one
    (on the shapes model, three objects at once: x3 then x10 more with 57% -> 135% -> 162% left and the
    retain loss +925%); erased: a lower rate. `tried` carries the bounds from round to round.
    """
    if passed(check) or check["margin_remaining"] is None:
        return None
    rate = config.learning_rate
    unmoved = not check["erased"] and check["margin_remaining"] > UNMOVED
    narrower = None if check["retain_kept"] else config.narrower()
    if narrower is not None:
        tried.clear()  # another set of weights: rates tried so far say little about it...
        if not unmoved:
            return narrower
        # ...but fewer weights at a rate that did not move the concept through more would not (their
        # margin, though, is no yardstick for the fewer weights')
        tried["failed"], tried["failed_margin"] = rate, float("inf")
        return replace(narrower, learning_rate=max(rate, 1e-6) * 10)
    if not check["erased"]:
        if "erased" not in tried and rate > tried.get("failed", rate) and check["margin_remaining"] >= tried["failed_margin"]:
            return None  # a higher rate moved the concept no further: higher still would only move the rest
        if rate >= tried.get("failed", 0.0):
            tried["failed"], tried["failed_margin"] = rate, check["margin_remaining"]
        if "erased" in tried:
            return replace(config, learning_rate=(tried["failed"] * tried["erased"]) ** 0.5)
        return replace(config, learning_rate=max(rate, 1e-6) * (10 if unmoved else 3))
    tried["erased"] = min(tried.get("erased", float("inf")), rate)
    return replace(config, learning_rate=(tried["failed"] * rate) ** 0.5 if tried.get("failed") else rate / 3)
