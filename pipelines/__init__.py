"""Diffusers pipelines of sd-erasure: the erasure-capable pipeline, SEOT's suppressing pipelines, SPM's
facilitated-transport pipelines and offline random-weight builders."""

from .pipeline_erasure import StableDiffusionErasurePipeline
from .pipeline_seot import SuppressEOTPipeline as StableDiffusionSuppressEOTPipeline
from .pipeline_seot_xl import SuppressEOTPipeline as StableDiffusionXLSuppressEOTPipeline
from .random_sd import build_random_pipeline, write_clip_tokenizer
from .spm_transport import StableDiffusionSPMPipeline, StableDiffusionXLSPMPipeline

__all__ = ["StableDiffusionErasurePipeline", "StableDiffusionSuppressEOTPipeline", "StableDiffusionXLSuppressEOTPipeline",
           "StableDiffusionSPMPipeline", "StableDiffusionXLSPMPipeline", "build_random_pipeline", "write_clip_tokenizer"]
