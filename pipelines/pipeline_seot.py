"""SEOT's StableDiffusionPipeline: suppresses the concept named in a prompt at inference (the method:
suppress_eot.py). An SEOT erase of an SD 1.x/2.x model copies this file into its output as
`pipeline.py`, beside suppress_eot.py: torch and diffusers only.

The class is named `SuppressEOTPipeline` in both SEOT pipeline files: diffusers loads every local
`custom_pipeline` as the same module and re-runs the file into it, so a process that loads an SD and
an SDXL SEOT folder would otherwise find two pipeline classes there. This package exports it as
`StableDiffusionSuppressEOTPipeline`.
"""

from diffusers import StableDiffusionPipeline

from .suppress_eot import SUPPRESSION_SETTINGS, SuppressEOTMixin


class SuppressEOTPipeline(SuppressEOTMixin, StableDiffusionPipeline):
    """StableDiffusionPipeline that suppresses `suppressed_words` wherever a prompt names them (SEOT)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True, suppressed_words: list | None = None,
                 suppression_alpha: float | None = None, suppression_start: float | None = None,
                 optimization_iterations: int | None = None, optimization_end: float | None = None,
                 optimization_scale: float | None = None, attention_loss_weights: list | None = None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        arguments = locals()
        self.register_suppression(**{name: arguments[name] for name in SUPPRESSION_SETTINGS})

    def _encode(self, prompts, device, count, cfg, negative_prompt, kwargs):
        embeds, negative = self.encode_prompt(prompts, device, count, cfg, negative_prompt, clip_skip=kwargs["clip_skip"])
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
