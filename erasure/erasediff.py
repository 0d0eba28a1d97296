"""EraseDiff: erasing data influence in diffusion models (Wu, Le, Hayat and Harandi, 2024).

The paper casts erasure as a constrained problem solved with a value function (BOME):
minimise the retain loss L_r(θ) subject to θ minimising the forget objective f, through
q(θ) = f(θ) − f(θ^K), θ^K being K descent steps on f from θ, and the update ∇L_r + λ·∇q.
f pulls the forget images' prediction under the concept's prompt to the prediction under a
misaligned prompt (the current model's, detached): the same forget term as SalUn's.

What the official code (JingWu321/EraseDiff, sd/train_scripts) computes, and so what this file
does: f(θ^K) enters as the average loss of the inner steps, a constant, so ∇q = ∇f and the outer
step is Adam on L_r + λ·f; λ is fixed (its BOME rule is a TODO in the code). The K inner
forget-only epochs run before each outer epoch are reverted (set_param(θ_i)) before the outer
epoch starts, so they change only Adam's moment estimates and the logged f(θ^K); they are not
run here (a documented deviation: one pass instead of K + 1).

Defaults follow the official run scripts (train_nsfw.sh, train_cls.sh): Adam lr 1e-5, batch 16,
λ 1; nudity `--train_method noxattn` with its README's "step 160 is enough"; class-wise `full`
with "step 60 is enough". The class-wise script steers forget images to 'a photo of a pokemon';
here the misaligned prompts are the shared default (the retain prompts, or the model profile's).
Data and the training loop are SalUn's (erasure/salun.py).
"""

from dataclasses import dataclass, replace
from typing import Literal

from .config import option
from .errors import EraseError
from .prompts import preset_prompts
from .salun import ForgetRetainConfig

CITATION = """@article{wu2024erasediff,
  title   = {EraseDiff: Erasing Data Influence in Diffusion Models},
  author  = {Wu, Jing and Le, Trung and Hayat, Munawar and Harandi, Mehrtash},
  journal = {arXiv preprint arXiv:2401.05779},
  year    = {2024}
}"""
ERASEDIFF = "EraseDiff"
PROTOCOL_DEFAULTS = {"nudity": {"scope": "noxattn", "steps": 160}, "class-wise": {"scope": "full", "steps": 60}}


@dataclass
class EraseDiffConfig(ForgetRetainConfig):
    """EraseDiff's settings; each field's help says where its default comes from."""

    steps: int | None = option(None, group="training", help="optimizer steps (default: 160 for nudity, 60 "
                                                            "otherwise, the official README's checkpoints)")
    batch_size: int | None = option(None, official=16, group="training", help="samples per step and device")
    scope: Literal["full", "xattn", "noxattn"] | None = option(
        None, group=ERASEDIFF, help="UNet weights trained (default: noxattn for nudity, full otherwise, as the "
                                    "official run scripts)")
    forget_loss_weight: float = option(1.0, group=ERASEDIFF, help="λ, weight of the forget objective (official run "
                                                                  "scripts: 1)")

    def check(self) -> None:
        super().check()
        if self.forget_loss_weight < 0:
            raise EraseError(f"`forget_loss_weight` must be 0 or more, got {self.forget_loss_weight}")

    def concept_defaults(self) -> dict:
        return super().concept_defaults() | PROTOCOL_DEFAULTS[preset_prompts(self.concept).kind]

    def unlearning_objective(self):
        return self.forget_loss_weight, 1.0, "misaligned"

    def narrower(self):
        gentler = replace(self, scope="xattn", misaligned_target="base")
        return None if gentler == self else gentler


def erase_pipeline(pipeline, config: EraseDiffConfig, session) -> tuple[dict, dict]:
    """Data, then Adam on L_r + λ·f over the scope's UNet weights."""
    from .saliency import in_scope
    from .salun import build_sets, unlearn, unlearning_record

    accelerator, timer = session.accelerator, session.timer
    with timer.phase("data"):
        forget, retain = build_sets(pipeline, config, accelerator, session.model_key, session.show_progress)
    with timer.phase("unlearning"):
        trainable = [n for n, _ in pipeline.unet.named_parameters() if in_scope(n, config.scope)]
        logs, resumed_from, optimizer_state, trained = unlearn(
            pipeline, forget, retain, trainable, None, config, accelerator, session.work_dir, session.step_callback,
            session.show_progress)
    pipeline.to(accelerator.device)  # unlearn() parked the text encoder and VAE on the CPU
    record = unlearning_record(config, forget, retain, logs, resumed_from, optimizer_state, trained)
    record["summary"] += [
        ["objective", f"{config.steps} Adam steps over `{config.scope}`, batch {config.batch_size}, learning rate "
                      f"{config.learning_rate}: retain loss + {config.forget_loss_weight} × forget images steered to "
                      f"the misaligned prompt's prediction (from the {config.misaligned_target} model); "
                      f"mixed precision {config.mixed_precision}, seed {config.seed}"],
    ]
    return record, trained.artifacts()
