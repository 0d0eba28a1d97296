"""ScissorHands: scrub the concept's most connected weights, then repair (Wu & Harandi, ECCV 2024).

1. Connection sensitivity (SNIP): s = |θ ⊙ Σ∇θ ℓ_f| over a few forget images, ℓ_f the forget
   images' denoising loss (guided with w = `saliency_guidance_scale`, 0: plain).
2. Reset: the top `reset_ratio` of s within the trained `scope` are re-initialised as a fresh
   layer would be (weight matrices and kernels drawn by `reset_init`, biases 0, norm scales 1).
3. Repair: every weight of the scope trains with Adam on
   L = MSE(ε_θ(x_r, c_r), ε) + λ·ℓ_forget, where ℓ_forget pulls the forget images' prediction to
   the misaligned prompt's (`forget_objective misaligned`), or is the forget images' denoising
   loss with a minus sign (`ascent`).

Defaults follow the official code (JingWu321/Scissorhands, SD/, which adapts SalUn's; its
README's nudity command: `--train_method full --sparsity 0.99 --lam 0.1 --prune_num 1 --lr 5e-5
--epochs 5 --batch_size 16`): reset_ratio 0.01 (1 − sparsity), λ 0.1, Adam lr 5e-5 without weight
decay, batch 16, 250 steps (5 epochs of SalUn's 800 forget images at batch 16), one batch of 16
forget images for the sensitivity. Its two scripts differ by protocol, and so do the defaults
here (erasure/prompts.py decides the protocol): nudity (`shs.py`) scores the plain loss, resets
with Kaiming-uniform and steers forget images to 'a photo of a person wearing clothes' from the
current model's prediction; class-wise (`shs_cls.py`) scores the loss guided at w = 7.5, resets
with a truncated normal (std 0.02) and ascends the forget loss. As coded, both scripts apply the
reset only inside the self-attention of two SD-1.x decoder blocks (CompVis output_blocks 4 and 7),
a restriction the paper does not state and a rule no other UNet has names for; here the reset
covers the scope. Data, prompts and the training loop are SalUn's (erasure/salun.py).
"""

import os
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from .config import full_weights_only, option
from .errors import EraseError
from .prompts import preset_prompts
from .salun import ForgetRetainConfig

CITATION = """@inproceedings{wu2024scissorhands,
  title     = {Scissorhands: Scrub Data Influence via Connection Sensitivity in Networks},
  author    = {Wu, Jing and Harandi, Mehrtash},
  booktitle = {European Conference on Computer Vision},
  year      = {2024}
}"""
SHS = "ScissorHands"
# What each official script does, by protocol (shs.py: nudity, shs_cls.py: class-wise)
PROTOCOL_DEFAULTS = {
    "nudity": {"saliency_guidance_scale": 0.0, "reset_init": "kaiming-uniform", "forget_objective": "misaligned"},
    "class-wise": {"saliency_guidance_scale": 7.5, "reset_init": "trunc-normal", "forget_objective": "ascent"},
}


@dataclass
class ScissorHandsConfig(ForgetRetainConfig):
    """ScissorHands' settings; each field's help says where its default comes from."""

    NO_LORA_TRAINING: ClassVar[str] = ("it re-initialises single weights before the repair, which an adapter "
                                       "trained from the base weights cannot")
    adapter: Literal["full", "lora"] = full_weights_only(NO_LORA_TRAINING)

    steps: int | None = option(None, official=250, group="training",
                               help="optimizer steps of the repair (official: 5 epochs of 800 forget images at batch 16)")
    batch_size: int | None = option(None, official=16, group="training", help="samples per step and device")
    learning_rate: float | None = option(None, official=5e-5, group="training", help="Adam learning rate of the repair")
    reset_ratio: float | None = option(None, official=0.01, group=SHS,
                                       help="share of the scope's weights re-initialised, the most connected to the "
                                            "concept (official README: --sparsity 0.99)")
    saliency_images: int = option(16, group=SHS, help="forget images whose summed gradient scores the connections "
                                                      "(official: one batch of 16)")
    reset_init: Literal["kaiming-uniform", "trunc-normal"] | None = option(
        None, group=SHS, help="how reset weight matrices and kernels are drawn (default: kaiming-uniform for "
                              "nudity, trunc-normal (std 0.02) otherwise, as the official scripts)")
    scope: Literal["full", "xattn", "noxattn"] | None = option(
        None, official="full", group=SHS, help="weights reset and repaired: full UNet (official), xattn "
                                               "(cross-attention), noxattn")
    forget_objective: Literal["misaligned", "ascent"] | None = option(
        None, group=SHS, help="forget term of the repair: pull forget images' prediction to the misaligned prompt's, "
                              "or ascend their denoising loss (default: misaligned for nudity, ascent otherwise)")
    forget_loss_weight: float = option(0.1, group=SHS, help="λ, weight of the forget term (official)")

    def check(self) -> None:
        super().check()
        if self.reset_ratio is not None and not 0 <= self.reset_ratio < 1:
            raise EraseError(f"`reset_ratio` {self.reset_ratio} is outside [0, 1): use e.g. 0.01 to reset the most "
                             "connected 1% of the weights")
        if self.forget_loss_weight < 0:
            raise EraseError(f"`forget_loss_weight` must be 0 or more, got {self.forget_loss_weight}")
        self.require_positive("saliency_images")

    def concept_defaults(self) -> dict:
        return super().concept_defaults() | PROTOCOL_DEFAULTS[preset_prompts(self.concept).kind]

    def unlearning_objective(self):
        sign = -1.0 if self.forget_objective == "ascent" else 1.0
        return sign * self.forget_loss_weight, 1.0, self.forget_objective

    def narrower(self):
        gentler = replace(self, scope="xattn" if self.scope == "full" else self.scope, misaligned_target="base")
        return None if gentler == self else gentler


def connection_sensitivity(pipeline, forget, config: ScissorHandsConfig, accelerator, show_progress=True) -> dict:
    """SNIP scores |θ ⊙ Σ∇θ ℓ_f| of the scope's parameters over the first `saliency_images` forget images."""
    from .data import LatentSet
    from .salun import forget_gradient_magnitudes
    from .saliency import in_scope

    names = [n for n, _ in pipeline.unet.named_parameters() if in_scope(n, config.scope)]
    scored = LatentSet(forget.latents[:config.saliency_images], forget.prompts[:config.saliency_images])
    gradients = forget_gradient_magnitudes(pipeline, scored, names, config, accelerator, show_progress)
    parameters = dict(pipeline.unet.named_parameters())
    return {n: gradients.pop(n).mul_(parameters[n].detach().abs()) for n in names}


def reset_weights(unet, reset_mask: dict, init: str, seed: int) -> None:
    """Re-initialise the masked entries as a fresh layer: matrices and kernels by `init`, biases 0,
    other 1-D weights (norm scales) 1. The draws depend on the seed and the parameter's name only."""
    import torch

    from .diffusion import seeded_generator

    parameters = dict(unet.named_parameters())
    for name, mask in reset_mask.items():
        if not mask.any():
            continue
        param = parameters[name]
        fresh = torch.empty(param.shape, dtype=torch.float32)
        if name.endswith("bias"):
            fresh.zero_()
        elif param.dim() == 1:
            fresh.fill_(1.0)
        elif init == "kaiming-uniform":
            torch.nn.init.kaiming_uniform_(fresh, a=0, nonlinearity="relu", generator=seeded_generator(seed, "reset", name))
        else:
            torch.nn.init.trunc_normal_(fresh, std=0.02, generator=seeded_generator(seed, "reset", name))
        with torch.no_grad():
            param.copy_(torch.where(mask.to(param.device), fresh.to(param.device, param.dtype), param))


def erase_pipeline(pipeline, config: ScissorHandsConfig, session) -> tuple[dict, dict]:
    """Data, connection sensitivity, reset, repair of `pipeline.unet`; the reset entries go to reset_mask.safetensors."""
    import torch

    from .saliency import cached_mask, full_mask, in_scope, mask_densities, saliency_mask_from_scores
    from .salun import build_sets, unlearn, unlearning_record

    accelerator, timer = session.accelerator, session.timer
    unet = pipeline.unet
    with timer.phase("data"):
        forget, retain = build_sets(pipeline, config, accelerator, session.model_key, session.show_progress)
    mask_file = os.path.join(session.work_dir, "reset_mask.safetensors") if session.work_dir else None
    shapes = [(n, p.shape) for n, p in unet.named_parameters()]

    def most_connected():
        if config.reset_ratio == 0:
            return {n: torch.zeros(s, dtype=torch.bool) for n, s in shapes}
        scores = connection_sensitivity(pipeline, forget, config, accelerator, session.show_progress)
        return full_mask(shapes, saliency_mask_from_scores(scores, config.reset_ratio))

    with timer.phase("sensitivity"):
        reset_mask = cached_mask(mask_file, most_connected, accelerator.is_main_process, concept=config.concept,
                                 ratio=config.reset_ratio, scope=config.scope, method=config.method)
        reset_weights(unet, reset_mask, config.reset_init, config.seed)
    with timer.phase("repair"):  # dense: every weight of the scope moves
        trainable = [n for n, _ in shapes if in_scope(n, config.scope)]
        logs, resumed_from, optimizer_state, trained = unlearn(
            pipeline, forget, retain, trainable, None, config, accelerator, session.work_dir, session.step_callback,
            session.show_progress)
    pipeline.to(accelerator.device)  # unlearn() parked the text encoder and VAE on the CPU
    reset_share, _, per_layer = mask_densities(reset_mask)
    objective = ("forget images steered to the misaligned prompt's prediction (from the "
                 f"{config.misaligned_target} model)" if config.forget_objective == "misaligned"
                 else "the forget images' denoising loss ascended")
    record = unlearning_record(config, forget, retain, logs, resumed_from, optimizer_state, trained)
    record["reset"] = {"ratio": config.reset_ratio, "scope": config.scope, "init": config.reset_init,
                       "share_of_unet": reset_share, "layer_share": {n: v for n, v in per_layer.items() if v}}
    record["summary"] += [
        ["reset", f"the top {config.reset_ratio} of |θ·∇ℓ_f| (over {min(config.saliency_images, len(forget))} forget "
                  f"images, guidance {config.saliency_guidance_scale}) inside `{config.scope}` re-initialised "
                  f"({config.reset_init}); {reset_share:.2%} of all UNet weights (`reset_mask.safetensors`)"],
        ["repair", f"{config.steps} Adam steps over `{config.scope}`, batch {config.batch_size}, learning rate "
                   f"{config.learning_rate}: retain loss + {config.forget_loss_weight} × forget term ({objective}); "
                   f"mixed precision {config.mixed_precision}, seed {config.seed}"],
    ]
    return record, {"reset_mask": reset_mask}
