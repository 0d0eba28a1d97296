"""SEOT: suppress the concept's text embeddings at inference (Li et al., ICLR 2024). No training,
no weight changes: the erase writes the base model's weights unchanged, the settings into
model_index.json, and the pipeline that applies them as OUT/pipeline.py (pipelines/pipeline_seot.py
for SD 1.x/2.x, pipeline_seot_xl.py for SDXL) beside OUT/suppress_eot.py (the method, in its
docstring, including how it treats SDXL's two text encoders and pooled embedding).

Loading OUT:
- `DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT, trust_remote_code=True)` runs OUT/pipeline.py (torch and
  diffusers only; read it before you run it, as any code): it suppresses.
- `sd_erasure.pipelines.StableDiffusionSuppressEOTPipeline.from_pretrained(OUT)` (SDXL:
  `StableDiffusionXLSuppressEOTPipeline`), and every sd-erase command given OUT, use this package's
  copy of that class: no code from the folder runs.
- Plain `DiffusionPipeline.from_pretrained(OUT)` loads the stock pipeline that ignores the settings
  (diffusers warns about them): the base model, the concept NOT suppressed.

Storage beyond the base model: no tensors, the two Python files (~20 KB) and a few lines of JSON.

Defaults are the official code's (sen-mao/SuppressEOT, suppress_eot_w_nulltext.py, generated
images): α = 1, suppression from 20% of the sampling steps (τ = 0.8), 10 optimization iterations
per step up to 40% of the steps (20 of 50), step scale 20, loss weights 1 (other words) and −0.5
(the concept) for both cross- and self-attention. The official code takes the concept's token
indices from the user per prompt; here they are found by matching `suppressed_words` (default: the
concept's text) in each prompt, and prompts without them are not changed.

The self-check scores the prompt embeddings the pipeline uses at each noise level: unsuppressed
above the noise of its first suppressed sampling step, SWR-suppressed below. ITO depends on the
image being sampled, so the verdict is about SWR alone.
"""

import os
from dataclasses import dataclass
from typing import ClassVar

from .config import EraseConfig, option
from .errors import EraseError, shorten

CITATION = """@inproceedings{li2024get,
  title     = {Get What You Want, Not What You Don't: Image Content Suppression for Text-to-Image Diffusion Models},
  author    = {Li, Senmao and van de Weijer, Joost and Hu, Taihang and Khan, Fahad Shahbaz and Hou, Qibin and
               Wang, Yaxing and Yang, Jian},
  booktitle = {International Conference on Learning Representations},
  year      = {2024}
}"""
SEOT = "SEOT"


@dataclass
class SeotConfig(EraseConfig):
    """SEOT's settings; each field's help says where its default comes from."""

    STRONGER: ClassVar[str] = "list the concept's other word forms in `suppressed_words`, or lower `suppression_start`"
    ERASED_FIELDS: ClassVar[tuple[str, ...]] = ("suppressed_words",)  # several concepts: all suppressed together

    suppressed_words: list[str] = option(default_factory=list, group=SEOT, flag="--suppress-word", metavar="TEXT",
                                         help="word (or words) whose embeddings are suppressed wherever a prompt "
                                              "contains it, matched as tokens (repeatable; default: the concept's "
                                              "text; list inflections such as plurals too)")
    suppression_alpha: float = option(1.0, group=SEOT, help="α of SWR, σ ← σ·exp(−ασ) (official 1)")
    suppression_start: float = option(0.2, group=SEOT, help="share of the sampling steps left unsuppressed "
                                                            "(official cross_retain_steps 0.2, τ = 0.8)")
    optimization_iterations: int = option(10, group=SEOT, help="ITO gradient steps per sampling step "
                                                               "(official iter_each_step 10; 0: SWR only)")
    optimization_end: float = option(0.4, group=SEOT, help="share of the sampling steps after which ITO stops "
                                                           "(official max_step_to_erase 20 of 50)")
    optimization_scale: float = option(20.0, group=SEOT, help="ITO step size before the √(1 → 0.1) decay "
                                                              "(official 20 for generated images)")
    retain_weight: float = option(1.0, group=SEOT, help="ITO weight of keeping the other words' attention maps "
                                                        "(official lambda_retain and lambda_self_retain 1)")
    erase_weight: float = option(-0.5, group=SEOT, help="ITO weight of the concept's attention maps' similarity "
                                                        "(official lambda_erase and lambda_self_erase -0.5)")

    def check(self) -> None:
        super().check()
        if self.output_format not in (None, "pipeline"):
            raise EraseError("SEOT changes no weight, so there is no LoRA to write: use `output_format` pipeline")
        if self.sequential and len(self.concepts) > 1:
            raise EraseError("SEOT suppresses every concept's words in one pipeline: leave out `sequential`")
        self.require_positive("suppression_alpha", "optimization_scale")
        for name in ("suppression_start", "optimization_end"):
            if not 0 <= getattr(self, name) <= 1:
                raise EraseError(f"`{name}` is a share of the sampling steps: give a value from 0 to 1")
        if self.optimization_iterations < 0:
            raise EraseError("`optimization_iterations` must be 0 (SWR only) or more")
        if not all(w.strip() for w in self.suppressed_words):
            raise EraseError("a `suppressed_words` entry is empty: give the word's text")

    def concept_defaults(self) -> dict:
        return {"suppressed_words": [self.concept.strip()]}

    def check_with_pipeline(self, pipeline) -> None:
        from ..pipelines.suppress_eot import text_parts

        for word in self.suppressed_words:
            for tokenizer, _ in text_parts(pipeline):
                ids = tokenizer(word, add_special_tokens=False).input_ids
                if not ids or len(ids) > tokenizer.model_max_length - 2:
                    raise EraseError(f"suppressed word {shorten(word)} is {len(ids)} tokens long: give a word or "
                                     "phrase that fits in a prompt")

    def pipeline_settings(self) -> dict:
        """What the SEOT pipeline keeps in model_index.json."""
        return {"suppressed_words": list(self.suppressed_words), "suppression_alpha": self.suppression_alpha,
                "suppression_start": self.suppression_start, "optimization_iterations": self.optimization_iterations,
                "optimization_end": self.optimization_end, "optimization_scale": self.optimization_scale,
                "attention_loss_weights": [self.retain_weight, self.erase_weight] * 2}


def erase_pipeline(pipeline, config: SeotConfig, session) -> tuple[dict, dict]:
    from ..pipelines.suppress_eot import SuppressEOTMixin
    from .model_io import is_sdxl, suppressing_pipeline_files

    settings = config.pipeline_settings()
    if isinstance(pipeline, SuppressEOTMixin):
        pipeline.register_to_config(**settings)
    else:  # a stock pipeline's config takes no other keys; save_stock_pipeline writes these with pipeline.py
        pipeline.suppression = settings
    words = "; ".join(repr(w) for w in config.suppressed_words)
    exported = "StableDiffusionXLSuppressEOTPipeline" if is_sdxl(pipeline) else "StableDiffusionSuppressEOTPipeline"
    record = {
        "prompts": {"suppressed_words": config.suppressed_words},
        "suppression": {**settings, "stored_bytes": sum(map(os.path.getsize, suppressing_pipeline_files(pipeline).values()))},
        "summary": [
            ["weights", "none changed: the concept is suppressed at inference by the folder's pipeline.py "
                        f"(load with custom_pipeline=OUT, trust_remote_code=True, or sd_erasure.pipelines.{exported})"],
            ["suppressed", f"{words} wherever a prompt contains it; other prompts unchanged"],
            ["settings", f"SWR α = {config.suppression_alpha} from {config.suppression_start:.0%} of the steps; "
                         + (f"ITO {config.optimization_iterations} iterations per step up to "
                            f"{config.optimization_end:.0%} of the steps" if config.optimization_iterations
                            else "no ITO")],
        ],
    }
    return record, {}
