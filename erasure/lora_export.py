"""Any erasure as a LoRA: the difference between the erased and the base weights, factored per
layer, in the file `pipe.load_lora_weights(OUT)` loads (diffusers' peft layout, written by
diffusers' own `save_lora_weights`).

Each changed Linear or Conv2d weight ΔW (out × in·k·k) becomes B·A by SVD (float32, on the device
the weights are on; randomized where the delta's rank is low, see low_rank_svd): exact at the
delta's numerical rank (singular values above EXACT_TOLERANCE of the largest, above float32 SVD's
noise; UCE's delta has rank at most the number of its edited text positions), or truncated to
`lora_rank`. Two errors are recorded per layer: `relative_error`
‖ΔW − B·A‖/‖ΔW‖, what truncation lost of the edit, and `weight_error` ‖ΔW − B·A‖/‖W‖, how far the
fused weight is from the erased one. A delta much smaller than its weight carries the float32
rounding of the stored weights as a full-rank floor, dropped as noise: that shows in
`relative_error` (1.5e-4 for a rank-1 delta 1e-4 of its weight) and not in `weight_error`. A LoRA
cannot hold a changed bias, norm or embedding: those are listed under `not_in_adapter`, and a user
who needs them takes the pipeline output. A layer
whose exact rank is close to full costs more as two factors than dense (r·(out + in) > out·in);
the record says how many bytes the adapter takes against the changed tensors stored densely.
A LoRA the method trained (`adapter lora`, erasure/lora_training.py) is written as it trained, its
errors measured the same way.
"""

import json
import os

import torch

from .errors import EraseError, shorten
from .folders import LORA_FILE, TRAINABLE_COMPONENTS, weight_files

EXACT_TOLERANCE = 1e-5  # singular values below this share of the largest are float32 rounding of the edit


def lora_factors(delta: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lora_A, lora_B, relative error) of a Linear (out, in) or Conv2d (out, in, k, k) weight delta."""
    matrix = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = low_rank_svd(matrix)
    exact = max(1, int((s > s[0] * EXACT_TOLERANCE).sum()))
    r = exact if rank is None else min(rank, exact)
    b, a = u[:, :r] * s[:r], vh[:r]
    error = float(torch.linalg.norm(matrix - b @ a) / torch.linalg.norm(matrix))
    if delta.dim() == 4:  # conv: A is the k×k conv into r channels, B the 1×1 conv out of them
        a, b = a.reshape(r, *delta.shape[1:]), b.reshape(delta.shape[0], r, 1, 1)
    return a.to("cpu", delta.dtype).contiguous(), b.to("cpu", delta.dtype).contiguous(), error


def low_rank_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD of `matrix` (singular values descending), complete at least down to EXACT_TOLERANCE
    of the largest singular value.

    An erasure's delta is mostly of low rank (UCE: one per edited text position), and a full SVD of
    each of SD-1.5's 32 key/value projections took 3.8 s of a 4 s adapter save on 2 CPU cores. So first
    a randomized range finder (Halko, Martinsson and Tropp 2011) of 8, then 32 columns Q:
    once the part of the delta outside their span, ΔW − QQᵀΔW, has no singular value above
    EXACT_TOLERANCE of the largest (its spectral norm, estimated by power iteration), the full SVD
    would have kept nothing that the SVD of the small QᵀΔW lacks (tests/test_lora_export.py compares
    the two). A delta of high rank (SalUn's masked one) falls
    through to the full SVD."""
    generator = torch.Generator(matrix.device).manual_seed(0)  # the same factors on every run
    for columns in (8, 32):
        if 4 * columns > min(matrix.shape):
            break
        probe = torch.randn(matrix.shape[1], columns, generator=generator, device=matrix.device)
        basis = torch.linalg.qr(matrix @ probe).Q
        projected = basis.T @ matrix
        u, s, vh = torch.linalg.svd(projected, full_matrices=False)
        outside = matrix - basis @ projected
        # ‖R‖₂ ≤ ‖R‖_F ≤ √(rank R)·‖R‖₂: the Frobenius norm settles most cases, the power iteration the rest
        frobenius, threshold = float(outside.norm()), float(s[0]) * EXACT_TOLERANCE
        if frobenius <= threshold or (frobenius <= threshold * min(matrix.shape) ** 0.5
                                      and spectral_norm(outside, generator) <= threshold):
            return basis @ u, s, vh
    return torch.linalg.svd(matrix, full_matrices=False)


def spectral_norm(matrix: torch.Tensor, generator: torch.Generator, iterations: int = 8) -> float:
    """The largest singular value of `matrix`, by power iteration (from below)."""
    x = torch.randn(matrix.shape[1], generator=generator, device=matrix.device)
    for _ in range(iterations):
        x = matrix.T @ (matrix @ x)
        x = x / x.norm().clamp_min(torch.finfo(x.dtype).tiny)
    return float((matrix @ x).norm())


def factor_error(delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """‖ΔW − B·A‖/‖ΔW‖ of given factors (conv factors as lora_factors makes them)."""
    matrix = delta.reshape(delta.shape[0], -1).float()
    product = b.reshape(b.shape[0], -1).float().to(matrix.device) @ a.reshape(a.shape[0], -1).float().to(matrix.device)
    return float(torch.linalg.norm(matrix - product) / torch.linalg.norm(matrix))


def erased_delta_as_lora(pipeline, base_path: str, changed: dict[str, list[str]],
                         rank: int | None = None, trained: dict | None = None) -> tuple[dict, dict]:
    """Per component ("unet", "text_encoder", SDXL's "text_encoder_2"), the LoRA state dict of the
    `changed` tensors (by component, as model_io.changed_weights finds them) against the base model's
    safetensors files; and the record: rank and error per layer, sizes, what a LoRA cannot hold. `trained` holds a
    trained LoRA's factors per component (`adapter lora`): a layer that has them keeps them, its
    errors measured against the delta as for a factorised one."""
    from safetensors import safe_open

    from .model_io import weight_components

    trained = trained or {}
    layers, record = {}, {"rank": rank, "layers": {}, "not_in_adapter": [], "adapter_bytes": 0, "dense_bytes": 0,
                          "trained": bool(trained)}
    for component, model in weight_components(pipeline, TRAINABLE_COMPONENTS).items():
        state, lora, wanted = model.state_dict(), {}, set(changed.get(component, ()))
        factors = trained.get(component, {})
        for file in weight_files(os.path.join(base_path, component)):
            with safe_open(file, framework="pt") as f:
                for name in sorted(wanted.intersection(f.keys())):  # only what changed is read again
                    weight = state[name].detach()
                    delta = weight.float() - f.get_tensor(name).to(weight.device).float()
                    module_name, _, kind = name.rpartition(".")
                    module = model.get_submodule(module_name)
                    if kind != "weight" or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                        record["not_in_adapter"].append(f"{component}.{name}")
                        continue
                    if f"{module_name}.lora_A.weight" in factors:
                        a, b = factors[f"{module_name}.lora_A.weight"], factors[f"{module_name}.lora_B.weight"]
                        error = factor_error(delta, a, b)
                    else:
                        a, b, error = lora_factors(delta, rank)
                    lora[f"{module_name}.lora_A.weight"], lora[f"{module_name}.lora_B.weight"] = a, b
                    record["layers"][f"{component}.{module_name}"] = {
                        "rank": a.shape[0], "relative_error": error,
                        "weight_error": error * float(delta.norm() / weight.float().norm())}
                    record["adapter_bytes"] += (a.numel() + b.numel()) * a.element_size()
                    record["dense_bytes"] += delta.numel() * delta.element_size()
        if lora:
            layers[component] = lora
    for error in ("relative_error", "weight_error"):
        record[f"max_{error}"] = max((layer[error] for layer in record["layers"].values()), default=0.0)
    return layers, record


def save_lora(pipeline, base_path: str, folder: str, changed: dict[str, list[str]], rank: int | None = None,
              trained: dict | None = None) -> dict:
    """Write `folder`/pytorch_lora_weights.safetensors for the erasure held by `pipeline`; its record."""
    from .model_io import weight_components

    layers, record = erased_delta_as_lora(pipeline, base_path, changed, rank, trained)
    # the pipeline class's own writer: SDXL's takes the second text encoder's layers too
    type(pipeline).save_lora_weights(folder, **{f"{c}_lora_layers": layers.get(c)
                                                   for c in weight_components(pipeline, TRAINABLE_COMPONENTS)})
    record["file"] = LORA_FILE
    return record


def check_adapter_fits(adapter: str, model_path: str, model_name: str) -> dict:
    """Refuse, before any model loads, an adapter folder without a LoRA, or one whose layers have other
    shapes in the model at `model_path` (another architecture); the adapter's erasure.json record."""
    from safetensors import safe_open

    file, record_file = os.path.join(adapter, LORA_FILE), os.path.join(adapter, "erasure.json")
    if not os.path.isfile(file) or not os.path.isfile(record_file):
        raise EraseError(f"{shorten(adapter)} holds no erasure LoRA ({LORA_FILE} and erasure.json): give the --output "
                         "of `sd-erase erase --output-format lora|both`")
    with open(record_file) as f:
        record = json.load(f)
    made_on = record["base_model"]["id"]
    with safe_open(file, framework="pt") as lora:
        factors = {key: lora.get_slice(key).get_shape() for key in lora.keys()}
    for component in TRAINABLE_COMPONENTS:
        shapes = {}
        for file in weight_files(os.path.join(model_path, component)):
            with safe_open(file, framework="pt") as weights:
                shapes.update({key: weights.get_slice(key).get_shape() for key in weights.keys()})
        for key, a_shape in factors.items():
            if not (key.startswith(component + ".") and key.endswith(".lora_A.weight")):
                continue
            module = key[len(component) + 1:-len(".lora_A.weight")]
            b_shape = factors[key.replace(".lora_A.", ".lora_B.")]
            wanted = [b_shape[0], *a_shape[1:]]
            found = shapes.get(module + ".weight")
            if found is None or list(found) != wanted:
                raise EraseError(
                    f"the adapter was made on {shorten(made_on)}, whose {component} {module} is "
                    f"{'×'.join(map(str, wanted))}; in {shorten(model_name)} it is "
                    f"{'×'.join(map(str, found)) if found is not None else 'missing'}: apply it to a checkpoint with "
                    f"the architecture of {shorten(made_on)}")
    return record
