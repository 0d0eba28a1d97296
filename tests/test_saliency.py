"""The saliency threshold: exact density, the largest |G| kept, ties and scopes handled."""

import pytest
import torch

from sd_erasure.erasure.errors import EraseError
from sd_erasure.erasure.saliency import in_scope, mask_densities, saliency_mask_from_scores


@pytest.mark.parametrize("ratio", [0.5, 0.1, 0.37, 1.0])
def test_keeps_exactly_the_largest_share(ratio):
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(300, 7, generator=g), "b": torch.randn(1001, generator=g) * 3, "c": torch.randn(5, generator=g)}
    masks = saliency_mask_from_scores(scores, ratio)
    flat = torch.cat([s.abs().flatten() for s in scores.values()])
    keep = round(ratio * flat.numel())
    assert sum(int(m.sum()) for m in masks.values()) == keep
    kept = torch.cat([s.abs()[m] for s, m in zip(scores.values(), masks.values())])
    dropped = torch.cat([s.abs()[~m] for s, m in zip(scores.values(), masks.values())])
    if dropped.numel():
        assert kept.min() >= dropped.max()
    assert torch.equal(kept.sort().values, flat.sort(descending=True).values[:keep].sort().values)


def test_ties_and_zero_gradients_still_give_the_exact_density():
    scores = {"used": torch.tensor([3.0, 1.0, 1.0, 1.0]), "unused": torch.zeros(6)}
    masks = saliency_mask_from_scores(scores, 0.3)  # 3 of 10: the 3.0 and two of the tied 1.0s
    assert masks["used"].tolist() == [True, True, True, False]
    assert not masks["unused"].any()
    masks = saliency_mask_from_scores(scores, 0.6)  # 6 of 10: all of "used" and 2 zeros
    assert masks["used"].all() and int(masks["unused"].sum()) == 2
    assert mask_densities(masks)[0] == 0.6


def test_sign_does_not_matter():
    masks = saliency_mask_from_scores({"w": torch.tensor([-5.0, 1.0, 4.0, -0.5])}, 0.5)
    assert masks["w"].tolist() == [True, False, True, False]


def test_invalid_ratio_and_scope():
    with pytest.raises(EraseError, match="outside"):
        saliency_mask_from_scores({"w": torch.ones(3)}, 0.0)
    with pytest.raises(EraseError, match="unknown scope"):
        in_scope("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", "attention")
    assert in_scope("x.attn2.to_k.weight", "xattn") and not in_scope("x.attn1.to_k.weight", "xattn")
    assert in_scope("x.attn1.to_k.weight", "noxattn") and not in_scope("x.attn2.to_v.weight", "noxattn")
