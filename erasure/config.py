"""The settings every method shares, and how a setting is declared: a dataclass field made with
`option(...)`, which carries its help text, its CLI group and, for fields left unset, the
official default. `sd-erase erase` builds its flags from these fields and nothing else, so a
field added to a method's config is an option of the CLI at once.

This module imports no torch: the CLI reads configs, and checks them, before anything heavy loads.

Where a value comes from, recorded per field in erasure.json (`settings_source`):
- "user": given by the user;
- "model profile": the base model folder's sd_erasure_profile.json (see erasure/profile.py);
- "official default": the method's official code (the field's `official` value, or the
  method's rule for the concept, e.g. SalUn's nudity prompts);
- "default": the dataclass default.
"""

import dataclasses
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import ClassVar, Literal

from .errors import EraseError, shorten

MixedPrecision = Literal["no", "fp16", "bf16"]
DEFAULT_LORA_RANK = 4
# Samplers by the short names the CLI takes (erasure.diffusion.SCHEDULERS maps them to diffusers classes).
Sampler = Literal["ddim", "pndm", "euler", "dpm"]


def option(default=MISSING, *, help: str, group: str = "all methods", official=None, flag: str | None = None,
           metavar: str | None = None, default_factory=MISSING):
    """A config field with its help text (for `--help`), the CLI group it is listed in, and the
    official default used when the field is left None and the model profile does not set it.
    `flag` overrides the option name (default: --field-name)."""
    metadata = {"help": help, "group": group, "official": official, "flag": flag, "metavar": metavar}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def full_weights_only(reason: str):
    """The `adapter` field of a training method that cannot train a LoRA in place of its weights
    (its `NO_LORA_TRAINING`), so that --help says so."""
    return option("full", group="adapter", help=f"full only: {reason} (--output-format lora still writes the "
                                               "erasure as a LoRA)")


def is_unset(value) -> bool:
    return value is None or value == []


@dataclass
class EraseConfig:
    """The fields every method reads. A method's config subclasses this (or TrainingConfig) and is
    registered in erasure/methods.py, which sets `method` to its registered name."""

    method: ClassVar[str] = ""
    # what the self-check's line advises when the concept remains, or the rest of the model moved
    STRONGER: ClassVar[str] = ""
    GENTLER: ClassVar[str] = ""
    # where the result goes and how the run is driven; they do not change the result
    RUN_CONTROL: ClassVar[frozenset] = frozenset({"output_dir", "overwrite", "cache_dir"})

    # Multi-concept erasure (erasure/concepts.py): the list fields one run erases from, e.g. forget
    # prompts (empty: the method takes one concept per run, and several are erased one after another);
    ERASED_FIELDS: ClassVar[tuple[str, ...]] = ()
    # list fields paired item by item with an erased one (misaligned prompt i steers forget prompt i),
    # each with the list a replacement is taken from when its item is erased by another concept;
    PAIRED_FIELDS: ClassVar[dict[str, tuple[str, str]]] = {}
    # and the lists of what a concept keeps (retain prompts), cleared of what another concept erases.
    KEPT_FIELDS: ClassVar[tuple[str, ...]] = ()

    model: str = option(help="base pipeline: a local diffusers folder, a Hub id (e.g. CompVis/stable-diffusion-v1-4), "
                             "or 'shapes' for the bundled model", group="model")
    concept: list[str] | str = option(help="what to erase, e.g. nudity or 'a cat'; sets the default prompts "
                                           "(repeatable: several concepts in one erase)", group="model")
    sequential: bool = option(False, group="model", help="with several concepts: erase them one after another, "
                                                         "each on the last one's result (default: all in one run "
                                                         "where the method can take them together)")
    output_dir: str | None = option(None, help="folder to write the erased pipeline to (must not exist, see --overwrite)",
                                    group="model", flag="--output", metavar="OUT")
    revision: str | None = option(None, help="Hub revision (branch, tag or commit) of --model", group="model")
    seed: int = option(0, help="seed of data synthesis, noise and sampling")
    mixed_precision: MixedPrecision = option("no", help="autocast precision; weights stay fp32")
    overwrite: bool = option(False, help="replace an existing --output (only once the new one is complete)")
    allow_pickle: bool = option(False, help="load a base model that has only pickled .bin/.ckpt weights "
                                            "(runs code: trusted sources only)")
    cache_dir: str | None = option(None, help="where synthesized/encoded latents are cached "
                                              "(default: $SD_ERASURE_CACHE or ~/.cache/sd-erasure)")
    output_format: Literal["pipeline", "lora", "both"] | None = option(
        None, group="model", help="what OUT holds: the erased pipeline, the erasure as a LoRA that "
                                  "pipe.load_lora_weights(OUT) loads onto the base model, or both "
                                  "(default: lora with --adapter lora, else pipeline)")
    self_check_images: int = option(16, group="self-check", help="held-out images of the concept, and as many of "
                                                                 "the retain prompts, the self-check measures the "
                                                                 "erase on (fewer: a faster, noisier check)")
    lora_rank: int | None = option(None, group="model", help="the LoRA's rank per layer: with --adapter lora the "
                                                            "rank trained (default 4, as diffusers' LoRA training "
                                                            "scripts); else the rank --output-format lora|both "
                                                            "factors the erased delta to (default: each delta's "
                                                            "own rank, exact)")

    @property
    def concepts(self) -> list[str]:
        """The concepts to erase, one or several."""
        return concept_list(self.concept)

    @property
    def one_after_another(self) -> bool:
        """Several concepts erased by a run per concept: asked for, or the method takes one per run."""
        return len(self.concepts) > 1 and (self.sequential or not self.ERASED_FIELDS)

    def check(self) -> None:
        """Reject impossible settings with one line that says what to do instead (cheap: no torch)."""
        check_concept(self.concept)
        check_choices(self)
        self.require_positive("lora_rank", "self_check_images")
        if self.lora_rank is not None and self.output_format == "pipeline" and not self.trains_lora:
            raise EraseError("`lora_rank` sets the adapter's rank: add `output_format` lora or both")

    @property
    def trains_lora(self) -> bool:
        """Whether the method trains a LoRA in place of its weights (TrainingConfig's `adapter` lora)."""
        return False

    def require_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise EraseError(f"`{name}` must be positive, got {value}")

    def require_prompts(self, *names: str) -> None:
        for name in names:
            if not all(p.strip() for p in getattr(self, name)):
                raise EraseError(f"`{name}` has an empty prompt: give the prompt text, or leave it out for the default")

    def with_defaults(self, profile: dict) -> tuple["EraseConfig", dict[str, str]]:
        """A copy with every unset field filled, and where each field's value came from (see the
        module docstring). `profile` holds the model profile's settings for this method and concept."""
        sources = {f.name: "user" if not is_unset(getattr(self, f.name)) and getattr(self, f.name) != _default(f)
                   else "default" for f in fields(self)}
        from_profile = {k: v for k, v in profile.items() if is_unset(getattr(self, k))}
        config = replace(self, **from_profile)
        sources.update(dict.fromkeys(from_profile, "model profile"))
        official = {f.name: f.metadata["official"] for f in fields(config)
                    if f.metadata.get("official") is not None and is_unset(getattr(config, f.name))}
        official.update({k: v for k, v in config.concept_defaults().items() if is_unset(getattr(config, k))})
        sources.update({k: "official default" for k in official})
        config = replace(config, **official)
        implied = {"output_format": "lora" if config.trains_lora else "pipeline"}
        if config.trains_lora:  # diffusers' LoRA training scripts: rank 4, alpha = rank (scale 1)
            implied |= {"lora_rank": DEFAULT_LORA_RANK, "lora_alpha": float(config.lora_rank or DEFAULT_LORA_RANK)}
        implied = {k: v for k, v in implied.items() if is_unset(getattr(config, k))}
        sources.update(dict.fromkeys(implied, "default"))
        return replace(config, **implied), sources

    def concept_defaults(self) -> dict:
        """Official defaults that follow from the concept or from other fields (methods override)."""
        return {}

    def check_family(self, family: str) -> None:
        """Checks that depend on the model family (`sd`, `sdxl`: folders.BaseModel.family), run with the
        model profile's settings in place, before the model loads."""

    def check_inputs(self) -> None:
        """Checks that read the user's files (image folders), run before any output is written."""

    def check_with_pipeline(self, pipeline) -> None:
        """Checks that need the loaded pipeline (e.g. prompt lengths), run before any output is written."""

    def settings(self) -> dict:
        """The settings that determine the result."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUN_CONTROL}


@dataclass
class TrainingConfig(EraseConfig):
    """Fields of the methods that fine-tune: optimisation, checkpoints and logging."""

    STRONGER: ClassVar[str] = "raise `learning_rate` or `steps`, or use `until_erased`"
    GENTLER: ClassVar[str] = "lower `learning_rate`"
    RUN_CONTROL: ClassVar[frozenset] = EraseConfig.RUN_CONTROL | {
        "resume_from_checkpoint", "report_to", "checkpointing_steps", "checkpoints_total_limit"}

    steps: int = option(100, help="optimizer steps", group="training")
    batch_size: int = option(8, help="samples per step and device", group="training")
    learning_rate: float | None = option(None, help="Adam learning rate", official=1e-5, group="training")
    gradient_accumulation_steps: int = option(1, help="micro-batches per optimizer step", group="training")
    gradient_checkpointing: bool = option(False, help="trade compute for memory in the UNet", group="training")
    checkpointing_steps: int = option(0, help="save a resumable checkpoint every K steps (0: off)", group="run control")
    checkpoints_total_limit: int | None = option(2, help="checkpoints kept while running", group="run control")
    resume_from_checkpoint: str | None = option(None, help="continue an interrupted run of the same --output",
                                                group="run control", metavar="latest|PATH")
    report_to: Literal["tensorboard"] | None = option(None, help="log losses to OUT/logs", group="run control")
    until_erased: bool = option(False, group="self-check", help="repeat the erase from the base weights, adapting "
                                "the learning rate (and, where the method has one, a narrower scope) to what the "
                                "self-check measured, until it finds the concept gone within the retain budget")
    max_rounds: int = option(5, group="self-check", help="with --until-erased: erases at most")
    adapter: Literal["full", "lora"] = option(
        "full", group="adapter", help="train the method's weights themselves, or a LoRA (peft) on their layers: "
                                      "gradients and optimizer state for the adapter's factors alone; the output "
                                      "is the adapter (--output-format both adds the fused pipeline)")
    lora_alpha: float | None = option(None, group="adapter", help="with --adapter lora: the LoRA's scale is "
                                                                 "alpha / rank (default: the rank, scale 1)")
    lora_target_modules: list[str] = option(
        default_factory=list, group="adapter", flag="--lora-target-module", metavar="NAME",
        help="with --adapter lora: only the method's layers whose names end with NAME (repeatable, e.g. to_k); "
             "default: every Linear and Conv2d layer the method trains")
    # why a method cannot train a LoRA in place of its weights ("": it can)
    NO_LORA_TRAINING: ClassVar[str] = ""

    @property
    def trains_lora(self) -> bool:
        return self.adapter == "lora"

    def check(self) -> None:
        super().check()
        self.require_positive("steps", "batch_size", "gradient_accumulation_steps", "max_rounds", "lora_alpha")
        if not self.trains_lora and (self.lora_alpha is not None or self.lora_target_modules):
            given = "lora_alpha" if self.lora_alpha is not None else "lora_target_modules"
            raise EraseError(f"`{given}` configures a trained LoRA: add `adapter` lora")
        if self.trains_lora and self.NO_LORA_TRAINING:
            raise EraseError(f"`adapter` lora is not available for {self.method}: {self.NO_LORA_TRAINING}; train it "
                             "with `adapter` full (`output_format` lora still writes the erasure as a LoRA)")
        if self.trains_lora and self.one_after_another:
            raise EraseError("`adapter` lora trains one adapter per run, and these concepts are erased one after "
                             "another: erase one concept per run, or use `adapter` full with `output_format` lora")
        if self.learning_rate is not None and self.learning_rate < 0:  # 0 is a dry run: everything but the update
            raise EraseError(f"`learning_rate` must be 0 or more, got {self.learning_rate}")
        if self.checkpointing_steps < 0:
            raise EraseError("`checkpointing_steps` must be 0 (off) or a positive step interval")
        if self.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(self.resume_from_checkpoint):
            raise EraseError(f"checkpoint {self.resume_from_checkpoint} does not exist: pass `resume_from_checkpoint` "
                             "latest or a checkpoint-N folder")
        if self.until_erased and self.resume_from_checkpoint not in (None, "latest"):
            raise EraseError("`until_erased` resumes its rounds itself: pass `resume_from_checkpoint` latest")
        if self.one_after_another:
            how = "with `sequential`" if self.ERASED_FIELDS else f"by {self.method}, which takes one concept per run"
            for name in ("until_erased", "resume_from_checkpoint"):
                if getattr(self, name):
                    raise EraseError(f"`{name}` is not supported for concepts erased one after another ({how}): "
                                     "erase one concept per run" + (", or leave out `sequential`"
                                                                     if self.ERASED_FIELDS else ""))

    def narrower(self) -> "TrainingConfig | None":
        """The same erase disturbing less of the rest (fewer weights, a fixed target), for --until-erased
        when the retain set drifted (None: no such)."""
        return None


@dataclass
class ImageSynthesisConfig(EraseConfig):
    """Fields of the methods whose data are images the base model generates for their prompts."""

    synthesis_steps: int | None = option(None, official=50, group="forget and retain data",
                                         help="sampler steps when synthesizing")
    synthesis_scheduler: Sampler | None = option(None, group="forget and retain data",
                                                 help="sampler for synthesis (default: the pipeline's own); dpm "
                                                      "reaches the same quality in fewer steps")
    synthesis_guidance_scale: float = option(7.5, group="forget and retain data", help="guidance scale when synthesizing")
    synthesis_batch_size: int | None = option(None, official=8, group="forget and retain data",
                                              help="images per synthesis batch")
    resolution: int | None = option(None, group="forget and retain data", help="image size of the data (default: the model's)")

    def check(self) -> None:
        super().check()
        self.require_positive("synthesis_steps", "synthesis_batch_size", "resolution")


@dataclass
class SynthesisConfig(TrainingConfig, ImageSynthesisConfig):
    """Fields of the methods that train on images the base model generates for their prompts (SalUn, CA)."""


@dataclass
class ClippedAdamWConfig(SynthesisConfig):
    """Fields of the methods whose official code trains with AdamW and gradient clipping (CA, FMN)."""

    weight_decay: float = option(0.01, group="training", help="AdamW weight decay")
    max_grad_norm: float = option(1.0, group="training", help="clip the trained parameters' gradient norm to this")

    def check(self) -> None:
        super().check()
        self.require_positive("max_grad_norm")
        if self.weight_decay < 0:
            raise EraseError(f"`weight_decay` must be 0 or more, got {self.weight_decay}")


@dataclass
class TrajectoryConfig(TrainingConfig):
    """Fields of the methods that train on points of guided DDIM trajectories of their prompts (ESD, AdvUnlearn)."""

    synthesis_steps: int | None = option(None, official=50, group="forget and retain data",
                                         help="DDIM steps of a trajectory")
    synthesis_guidance_scale: float = option(3.0, group="forget and retain data", help="guidance scale of the trajectories")
    synthesis_batch_size: int | None = option(None, official=8, group="forget and retain data",
                                              help="trajectories per sampling batch")
    resolution: int | None = option(None, group="forget and retain data", help="image size of the data (default: the model's)")

    def check(self) -> None:
        super().check()
        self.require_positive("synthesis_steps", "synthesis_batch_size", "resolution")


def concept_list(concept: str | list[str]) -> list[str]:
    """A `concept` field's value (one concept, or a list of them) as a list."""
    return [concept] if isinstance(concept, str) else list(concept)


def check_concept(concept: str | list[str] | None) -> None:
    concepts = concept_list(concept) if isinstance(concept, (str, list, tuple)) else None
    if not isinstance(concepts, (list, tuple)) or not concepts or not all(isinstance(c, str) and c.strip()
                                                                          for c in concepts):
        raise EraseError("`concept` is empty: name what to erase, e.g. nudity or 'a cat'")
    stripped = [c.strip() for c in concepts]
    twice = next((c for k, c in enumerate(stripped) if c in stripped[:k]), None)
    if twice is not None:
        raise EraseError(f"`concept` {shorten(twice)} is listed twice: list each concept once")


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def field_type(config_class, name: str):
    """(base type, Literal choices or None, whether it is a list) of a config field: what the CLI needs."""
    annotation = typing.get_type_hints(config_class)[name]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices, False
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], None, True
    return annotation, None, False


def check_choices(config) -> None:
    """A field typed Literal[...] takes one of its choices (the CLI checks this too; the Python API needs it)."""
    for f in fields(config):
        _, choices, _ = field_type(type(config), f.name)
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise EraseError(f"`{f.name}` {value!r} is not one of {', '.join(map(str, choices))}")


def default_text(f: dataclasses.Field) -> str | None:
    """What `--help` says the default is, or None where the help text says it."""
    default = _default(f)
    if f.metadata.get("official") is not None:
        official = f.metadata["official"]
        return f"the model profile's, else {official if not isinstance(official, list) else official or '[]'}"
    if default is None or default is False or default is MISSING or default == []:
        return None
    return str(default)
