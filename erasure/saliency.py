"""Weight saliency: which UNet weights matter most for the forget loss, as a boolean mask.

The mask is the top `mask_ratio` share of |∇θ ℓ_f| ranked globally over the chosen parameter
scope. The threshold is found by bisection on the float bit patterns (non-negative floats
order like their int32 bits), which is exact and needs no copy, sort or top-k of ~860M values.
"""

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import EraseError

SCOPES = {
    "full": "every UNet parameter",
    "xattn": "cross-attention only (parameter names containing attn2)",
    "noxattn": "everything but cross-attention",
}


def in_scope(name: str, scope: str) -> bool:
    if scope == "full":
        return True
    if scope == "xattn":
        return "attn2" in name
    if scope == "noxattn":
        return "attn2" not in name
    raise EraseError(f"unknown scope {scope!r}: choose one of {', '.join(SCOPES)}")


def _count_at_least(bits: list[torch.Tensor], value: int) -> int:
    return sum(int((b >= value).sum()) for b in bits)


def _threshold_bits(bits: dict[str, torch.Tensor], keep: int) -> int:
    """The largest int32 bit pattern v with at least `keep` entries >= v (bisection over [0, +inf])."""
    low, high = 0, 0x7F800000  # 0.0 and +inf; invariant: at least `keep` entries are >= low
    while low < high:
        middle = (low + high + 1) // 2
        if _count_at_least(list(bits.values()), middle) >= keep:
            low = middle
        else:
            high = middle - 1
    return low


def _magnitude_bits(scores: dict[str, torch.Tensor], mask_ratio: float) -> tuple[dict[str, torch.Tensor], int, int]:
    if not 0 < mask_ratio <= 1:
        raise EraseError(f"mask ratio {mask_ratio} is outside (0, 1]: use e.g. 0.5 to keep the top half")
    bits = {n: s.detach().float().abs().view(torch.int32) for n, s in scores.items()}
    total = sum(b.numel() for b in bits.values())
    return bits, total, round(mask_ratio * total)


def saliency_mask_from_scores(scores: dict[str, torch.Tensor], mask_ratio: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping exactly round(mask_ratio · N) of the N scored entries, the largest.

    Ties at the threshold are broken in parameter order, so the density is exact even when many
    scores are equal (for example all-zero gradients of unused parameters).
    """
    bits, total, keep = _magnitude_bits(scores, mask_ratio)
    if keep >= total:
        return {n: torch.ones_like(b, dtype=torch.bool) for n, b in bits.items()}
    low = _threshold_bits(bits, keep)
    masks = {n: b > low for n, b in bits.items()}
    missing = keep - sum(int(m.sum()) for m in masks.values())
    for name, b in bits.items():
        if missing <= 0:
            break
        ties = (b == low).flatten().nonzero().squeeze(1)[:missing]
        masks[name].view(-1)[ties] = True
        missing -= ties.numel()
    return masks


def soft_saliency_mask_from_scores(scores: dict[str, torch.Tensor], mask_ratio: float) -> dict[str, torch.Tensor]:
    """Float masks min(1, |g| / τ), τ the hard mask's threshold: the top `mask_ratio` entries get
    weight 1 as in the hard mask, every other entry the share of τ its saliency reaches (0 only
    where the gradient is exactly 0). Nothing is strictly frozen: what the hard mask's sparsity buys."""
    bits, total, keep = _magnitude_bits(scores, mask_ratio)
    tau = torch.tensor(_threshold_bits(bits, keep), dtype=torch.int32).view(torch.float32)
    if tau == 0:  # more than the kept share has zero gradient: every non-zero entry is above τ
        return {n: (b > 0).float() for n, b in bits.items()}
    return {n: (b.view(torch.float32) / tau).clamp_(max=1.0) for n, b in bits.items()}


def full_mask(parameter_names_and_shapes, scope_masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One tensor per UNet parameter: the scope's masks, and zeros (False) outside the scope."""
    dtype = next(iter(scope_masks.values())).dtype
    return {name: scope_masks[name].cpu() if name in scope_masks else torch.zeros(shape, dtype=dtype)
            for name, shape in parameter_names_and_shapes}


def mask_densities(mask: dict[str, torch.Tensor]) -> tuple[float, float, dict[str, float]]:
    """Share of entries that may change (non-zero), the mean mask weight, and the share per parameter."""
    total = sum(m.numel() for m in mask.values())
    nonzero = sum(int(m.count_nonzero()) for m in mask.values())
    weight = sum(float(m.float().sum()) for m in mask.values())
    return nonzero / total, weight / total, {n: int(m.count_nonzero()) / m.numel() for n, m in mask.items()}


def save_mask(mask: dict[str, torch.Tensor], path: str, **metadata) -> None:
    save_file({n: m.contiguous() for n, m in mask.items()}, path,
              metadata={k: json.dumps(v) for k, v in metadata.items()})


def cached_mask(path: str | None, compute, is_main_process: bool, **metadata) -> dict[str, torch.Tensor]:
    """The mask an interrupted run saved at `path`, else compute() saved there (whole or absent; by the main process)."""
    if path and os.path.isfile(path):
        return load_mask(path)
    mask = compute()
    if path and is_main_process:
        save_mask(mask, path + ".tmp", **metadata)
        os.replace(path + ".tmp", path)
    return mask


def load_mask(path: str) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}
