"""Diffusers pipelines of sd-erasure: the erasure-capable pipeline and offline random-weight builders."""

from .pipeline_erasure import StableDiffusionErasurePipeline
from .random_sd import build_random_pipeline, write_clip_tokenizer

__all__ = ["StableDiffusionErasurePipeline", "build_random_pipeline", "write_clip_tokenizer"]
