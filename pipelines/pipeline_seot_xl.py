"""SEOT's StableDiffusionXLPipeline: suppresses the concept named in a prompt at inference (the
method, and how it treats SDXL's two text encoders: suppress_eot.py). An SEOT
erase of an SDXL model copies this file into its output as `pipeline.py`, beside suppress_eot.py:
torch and diffusers only. Why the class is named `SuppressEOTPipeline`: pipeline_seot.py; this
package exports it as `StableDiffusionXLSuppressEOTPipeline`.
"""

from diffusers import StableDiffusionXLPipeline

from .suppress_eot import SUPPRESSION_SETTINGS, SuppressEOTMixin


class SuppressEOTPipeline(SuppressEOTMixin, StableDiffusionXLPipeline):
    """StableDiffusionXLPipeline that suppresses `suppressed_words` wherever a prompt names them (SEOT)."""

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder=None,
                 feature_extractor=None, force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None,
                 suppressed_words: list | None = None, suppression_alpha: float | None = None,
                 suppression_start: float | None = None, optimization_iterations: int | None = None,
                 optimization_end: float | None = None, optimization_scale: float | None = None,
                 attention_loss_weights: list | None = None):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        arguments = locals()
        self.register_suppression(**{name: arguments[name] for name in SUPPRESSION_SETTINGS})

    def _encode(self, prompts, device, count, cfg, negative_prompt, kwargs):
        embeds, negative, pooled, negative_pooled = self.encode_prompt(
            prompts, kwargs.pop("prompt_2", None), device, count, cfg, negative_prompt,
            kwargs.pop("negative_prompt_2", None), clip_skip=kwargs["clip_skip"])
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": negative_pooled}

    def _added_conditions(self, callback_kwargs, rows):
        return {"text_embeds": callback_kwargs["add_text_embeds"][-rows:], "time_ids": callback_kwargs["add_time_ids"][-rows:]}
