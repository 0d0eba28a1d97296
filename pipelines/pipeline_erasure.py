"""A StableDiffusionPipeline that can erase a concept from itself.

Inference is StableDiffusionPipeline's, untouched. `erase()` runs an erasure method on this
pipeline's own weights in memory (the training code lives in `erasure/`, as diffusers keeps
training out of pipelines), and `save_pretrained` writes a stock `StableDiffusionPipeline`
folder that plain `DiffusionPipeline.from_pretrained` loads without this package.

    pipe = StableDiffusionErasurePipeline.from_pretrained("CompVis/stable-diffusion-v1-4").to("cuda")
    result = pipe.erase("nudity", num_images=256, steps=100, mixed_precision="bf16")
    image = pipe("a photo of a person on a beach").images[0]
    pipe.save_pretrained("sd14-erased-nudity")
"""

import os

from diffusers import StableDiffusionPipeline


class StableDiffusionErasurePipeline(StableDiffusionPipeline):
    def erase(self, concept: str | list[str], method: str | None = None, step_callback=None, show_progress=True,
              **config):
        """Erase `concept` (or a list of concepts) from this pipeline in place with a registered
        `method` (default: the registry's default); returns an EraseResult (record, artifacts such
        as a saliency mask). Keyword arguments are fields of the method's config (see `sd-erase
        erase --help`)."""
        from ..erasure.job import erase_pipeline
        from ..erasure.methods import DEFAULT_METHOD
        from ..erasure.registry import get_method

        settings = get_method(method or DEFAULT_METHOD).config(model=self.name_or_path or "<in-memory pipeline>",
                                                               concept=concept, **config)
        result = erase_pipeline(self, settings, step_callback=step_callback, show_progress=show_progress)
        self.erasure_record = result.record
        return result

    def save_pretrained(self, save_directory, **kwargs):
        """Save as a stock StableDiffusionPipeline (a subclass name would break plain diffusers loading)."""
        from ..erasure.model_io import save_stock_pipeline

        base = self.name_or_path if self.name_or_path and os.path.isdir(self.name_or_path) else None
        save_stock_pipeline(self, save_directory, base_folder=base, **kwargs)
