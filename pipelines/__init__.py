"""Diffusers pipelines of sd-erasure: the erasure-capable pipeline, SEOT's suppressing pipeline and offline random-weight builders."""

from .pipeline_erasure import StableDiffusionErasurePipeline
from .pipeline_seot import StableDiffusionSuppressEOTPipeline
from .random_sd import build_random_pipeline, write_clip_tokenizer

__all__ = ["StableDiffusionErasurePipeline", "StableDiffusionSuppressEOTPipeline", "build_random_pipeline", "write_clip_tokenizer"]
