"""SalUn-soft: SalUn with a soft saliency mask, the variant the SalUn paper compares against.

Everything is SalUn's (data, saliency gradients, losses, defaults) except the mask: instead of
0/1 it is min(1, |g| / τ), τ the hard mask's threshold at `mask_ratio`. The top entries move
fully as in SalUn; every other weight with a non-zero saliency moves by the share of τ its
saliency reaches, so no weight is strictly frozen. The paper does not spell out its soft rule in
the material we follow; this one keeps the hard mask's top set and only relaxes its sparsity,
which is the property the paper credits for SalUn's advantage.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from .config import full_weights_only
from .salun import SalUnConfig


@dataclass
class SalUnSoftConfig(SalUnConfig):
    """SalUn's settings; `mask_ratio` sets where the soft mask reaches weight 1."""

    NO_LORA_TRAINING: ClassVar[str] = "its soft mask scales each weight's own update, which a low-rank adapter cannot"
    adapter: Literal["full", "lora"] = full_weights_only(NO_LORA_TRAINING)

    def saliency_mask(self, gradients: dict) -> dict:
        from .saliency import soft_saliency_mask_from_scores

        return soft_saliency_mask_from_scores(gradients, self.mask_ratio)
