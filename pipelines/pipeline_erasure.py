"""A StableDiffusionPipeline that can erase a concept from itself.

Inference is StableDiffusionPipeline's, untouched. `erase()` runs SalUn on this pipeline's own
UNet in memory (the training code lives in `erasure/`, as diffusers keeps training out of
pipelines), and `save_pretrained` writes a stock `StableDiffusionPipeline` folder that plain
`DiffusionPipeline.from_pretrained` loads without this package.

    pipe = StableDiffusionErasurePipeline.from_pretrained("CompVis/stable-diffusion-v1-4").to("cuda")
    saliency_mask = pipe.erase("nudity", num_images=256, steps=100, mixed_precision="bf16")
    image = pipe("a photo of a person on a beach").images[0]
    pipe.save_pretrained("sd14-erased-nudity")
"""

from diffusers import StableDiffusionPipeline


class StableDiffusionErasurePipeline(StableDiffusionPipeline):
    def erase(self, concept: str, method: str = "salun", step_callback=None, **config) -> dict:
        """Erase `concept` from this pipeline's UNet in place; returns the saliency mask.

        Keyword arguments are fields of the method's config (e.g. `erasure.SalUnConfig`):
        forget_prompts, retain_prompts, num_images, mask_ratio, scope, steps, learning_rate, ...
        """
        from erasure.methods import METHODS

        module = METHODS[method]
        settings = module.SalUnConfig(model=self.name_or_path or "<in-memory pipeline>", concept=concept, **config)
        saliency_mask, self.erasure_record = module.erase_pipeline(self, settings, step_callback=step_callback)
        return saliency_mask

    def save_pretrained(self, save_directory, **kwargs):
        """Save as a stock StableDiffusionPipeline (a subclass name would break plain diffusers loading)."""
        from erasure.model_io import save_stock_pipeline

        save_stock_pipeline(self, save_directory, **kwargs)
