"""Diffusers pipelines of sd-erasure: the erasure-capable pipeline, SEOT's suppressing pipelines and offline random-weight builders."""

from .pipeline_erasure import StableDiffusionErasurePipeline
from .pipeline_seot import SuppressEOTPipeline as StableDiffusionSuppressEOTPipeline
from .pipeline_seot_xl import SuppressEOTPipeline as StableDiffusionXLSuppressEOTPipeline
from .random_sd import build_random_pipeline, write_clip_tokenizer

__all__ = ["StableDiffusionErasurePipeline", "StableDiffusionSuppressEOTPipeline", "StableDiffusionXLSuppressEOTPipeline",
           "build_random_pipeline", "write_clip_tokenizer"]
