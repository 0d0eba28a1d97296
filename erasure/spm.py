"""SPM: one-dimensional adapters as "semi-permeable membranes" for concept erasure (Lyu et al., CVPR 2024).

The erasure is an adapter: a rank-1 LoRA on every Linear and Conv2d layer of the UNet's transformer
blocks (attention, feed-forward, proj_in/proj_out), the base model frozen. It is trained by ESD's
objective on the concept c (erasure/esd.py) plus latent anchoring: for K random text embeddings e
around c's, the adapted model must predict what the frozen model predicts,

    L = MSE(ε_θ(z_t, t, c), ε*(z_t, t, ∅) − η·(ε*(z_t, t, c) − ε*(z_t, t, ∅)))
      + λ·MSE(ε_θ(z_t, t, e), ε*(z_t, t, e))

so the membrane lets everything but c through unchanged. An anchor is a Gaussian direction over
c's token states, kept with probability 1 − cos(e, c) (draws close to c are turned away) and
scaled to 0.8–1.2 times the norm of c's states. z_t is a point of a partial DDIM trajectory of c
at guidance 3, as in ESD.

Defaults follow the official code (Con6924/SPM: train_spm.py, src/configs/prompt.py,
src/engine/sampling.py, configs/*/config.yaml and prompt.yaml): rank 1 with alpha 1, 3000 steps
of batch 1 at learning rate 1e-4, η = 1 (`guidance_scale` 1.0, the neutral prompt empty),
λ = 1000 (`la_strength`), K = 4 (`sampling_batch_size`), 30-step trajectories sampled by the
model being trained (`sample_from current`). This project trains with torch's Adam at a constant
rate where the official code uses AdamW8bit (bitsandbytes, not a dependency here) with 500 warm-up
steps and cosine restarts, and draws anchors from the run's seed. For SDXL the anchors replace
the token states and keep c's added conditions (pooled embedding, size ids).

The output is the adapter at full strength, which plain `pipe.load_lora_weights(OUT)` applies: the
paper's "without FT" setting, where latent anchoring alone keeps the other concepts. The paper's
facilitated transport (at inference each membrane weighed by how close the prompt is to its concept)
is `pipelines/spm_transport.py`'s `StableDiffusionSPMPipeline.load_membranes([OUT, ...])`, and
`sd-erase evaluate --facilitated-transport` measures it. Membranes of several concepts stack: load
each with its own `adapter_name` and activate them together with `pipe.set_adapters([...])`; or
erase several concepts into one membrane (`--concept A --concept B`: a concept's prompt drawn per
sample).
The config imports no torch.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from .config import option
from .errors import EraseError
from .esd import NegativeGuidanceConfig

CITATION = """@inproceedings{lyu2024one,
  title     = {One-dimensional Adapter to Rule Them All: Concepts, Diffusion Models and Erasing Applications},
  author    = {Lyu, Mengyao and Yang, Yuhong and Hong, Haiwen and Chen, Hui and Jin, Xuan and He, Yuan and
               Xue, Hui and Han, Jungong and Ding, Guiguang},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year      = {2024}
}"""
LAYERS = "every Linear and Conv2d layer of the UNet's transformer blocks"


@dataclass
class SpmConfig(NegativeGuidanceConfig):
    """SPM's settings; each field's help says where its default comes from."""

    GENTLER: ClassVar[str] = "lower `learning_rate`, or raise `anchor_strength`"
    # several concepts: neutral prompt i stays paired with forget prompt i
    PAIRED_FIELDS: ClassVar[dict] = {"misaligned_prompts": ("forget_prompts", "misaligned_prompts")}

    steps: int | None = option(None, official=3000, help="optimizer steps (official iterations)", group="training")
    learning_rate: float | None = option(None, official=1e-4, group="training", help="Adam learning rate")
    synthesis_steps: int | None = option(None, official=30, group="forget and retain data",
                                         help="DDIM steps of a trajectory (official max_denoising_steps)")
    adapter: Literal["lora"] = option("lora", group="adapter", help="SPM is an adapter: a LoRA on the layers of "
                                                                   "the UNet's transformer blocks")
    lora_rank: int | None = option(None, official=1, group="adapter", help="the membrane's rank per layer")
    lora_alpha: float | None = option(None, official=1.0, group="adapter", help="the LoRA's scale is alpha / rank")
    misaligned_prompts: list[str] = option(
        default_factory=list, group="forget and retain data", flag="--misaligned-prompt", metavar="TEXT",
        help="the neutral prompt the concept is pushed away from, paired with --forget-prompt by index (repeatable); "
             "default: the model profile's, else the empty prompt (official)")
    anchor_strength: float | None = option(None, official=1000.0, group="latent anchoring",
                                           help="lambda, the weight of the latent anchoring loss (0: ESD's objective "
                                                "alone on the membrane)")
    anchor_samples: int | None = option(None, official=4, group="latent anchoring",
                                        help="random anchor embeddings per sample and step")

    def check(self) -> None:
        super().check()
        self.require_positive("anchor_samples")
        if self.anchor_strength is not None and self.anchor_strength < 0:
            raise EraseError(f"`anchor_strength` must be 0 or more, got {self.anchor_strength}")

    def neutral_prompt(self, k: int) -> str:
        return self.misaligned_prompts[k % len(self.misaligned_prompts)] if self.misaligned_prompts else ""


def membrane_weights(unet) -> list[str]:
    """The weights of every Linear and Conv2d layer inside the UNet's transformer blocks."""
    import torch
    from diffusers import Transformer2DModel

    return [f"{block}.{name}.weight" for block, module in unet.named_modules() if isinstance(module, Transformer2DModel)
            for name, layer in module.named_modules() if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))]


def random_anchors(states, count: int, length: int, generator):
    """`count` random embeddings around `states` (a prompt's (rows, width) conditioning): Gaussian
    directions over its first `length` rows (the token states), each kept with probability 1 − its
    cosine similarity to them and scaled to 0.8–1.2 times their norm; rows after them are kept."""
    import torch

    tokens = states[:length].detach().float().cpu().flatten()
    anchors = []
    while len(anchors) < count:
        direction = torch.randn(tokens.shape, generator=generator)
        direction /= direction.norm()
        if float(torch.rand((), generator=generator)) >= 1 - float(direction @ tokens) / float(tokens.norm()):
            continue  # a draw close to the concept is no anchor
        scale = 0.8 + 0.4 * float(torch.rand((), generator=generator))
        anchor = states.detach().clone()
        anchor[:length] = (scale * tokens.norm() * direction).view(length, -1).to(anchor)
        anchors.append(anchor)
    return torch.stack(anchors)


def erase_pipeline(pipeline, config: SpmConfig, session) -> tuple[dict, dict]:
    import torch

    from .diffusion import per_sample_mse, seeded_generator
    from .esd import train_negative_guidance

    length, k, strength = pipeline.tokenizer.model_max_length, config.anchor_samples, config.anchor_strength

    def latent_anchoring(model, frozen, z, t, concept, keys):
        anchors = torch.cat([random_anchors(states, k, length, seeded_generator(config.seed, "spm-anchors", *key))
                             for states, key in zip(concept, keys)])
        z, t = z.repeat_interleave(k, 0), t.repeat_interleave(k, 0)
        with torch.no_grad():
            kept = frozen(z, t, anchors)
        loss = per_sample_mse(model(z, t, anchors).sample, kept).mean()
        return strength * loss, {"anchor_loss": loss.item()}

    record, artifacts = train_negative_guidance(pipeline, config, session, membrane_weights(pipeline.unet),
                                                {"layers": "transformer blocks"}, LAYERS,
                                                regularizer=latent_anchoring if strength else None)
    if strength:
        record["summary"].insert(2, ["latent anchoring", f"λ = {strength:g}: {k} random text embeddings per sample "
                                                         "and step keep the frozen model's prediction"])
    return record, artifacts
