"""Training a LoRA in place of the weights a method trains (`adapter lora`), through peft.

A method names the weights it would train (its scope; for SalUn the layers its saliency mask
selects). `TrainedWeights` puts a peft LoRA (rank `lora_rank`, scale `lora_alpha` / rank; A drawn
from the run's seed, B zero, so training starts at the base model) on every Linear and Conv2d layer
among them, or on those whose names end with one of `lora_target_modules`, and hands the method the
parameters its optimizer steps: the factors alone, so gradients and optimizer state hold
r·(in + out) entries per layer instead of in·out. The frozen base model some methods compare
against is the same module with its adapters switched off: no copy of any weight.

When training ends, `finish()` folds the factors into the weights (the pipeline then holds the
erasure as after any other method, for the self-check and a pipeline output) and returns them, the
scale folded into B, as the LoRA the output writes: the trained factors themselves, not an SVD of
the fused delta. With `adapter full` the same object trains the tensors themselves.
"""

from contextlib import contextmanager

import torch

from .errors import EraseError, shorten
from .training import freeze, frozen_copy, train_only

ADAPTER = "default"  # peft's adapter name; the saved factors carry none


def lora_layers(module: torch.nn.Module, weight_names, target_modules=()) -> list[str]:
    """The Linear and Conv2d layers of `module` whose weight is in `weight_names` (and whose names
    end with one of `target_modules`, when given)."""
    wanted = set(weight_names)
    return [name for name, layer in module.named_modules()
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and f"{name}.weight" in wanted
            and (not target_modules or any(name == t or name.endswith("." + t) for t in target_modules))]


class TrainedWeights:
    """What a method trains in `component` ("unet", "text_encoder") of the pipeline: the tensors
    `names` themselves, or (config.adapter lora) a LoRA on their layers. `parameters` go to the
    optimizer; `base_output` is the frozen base model's output; `finish()` ends training."""

    def __init__(self, pipeline, component: str, names, config, gradient_checkpointing: bool = False,
                 frozen_base: bool = False):
        self.component, self.module, self.lora = component, getattr(pipeline, component), config.trains_lora
        self.module_entries = sum(p.numel() for p in self.module.parameters())
        wanted = set(names)
        # the tensors the method trains (a LoRA's layers': their weights change when it is fused)
        self.scope_tensors = len(wanted)
        self.scope_entries = sum(p.numel() for n, p in self.module.named_parameters() if n in wanted)
        self.scope_share = self.scope_entries / self.module_entries
        self.base_values = None
        if self.lora:
            from peft import LoraConfig, inject_adapter_in_model

            layers = lora_layers(self.module, wanted, config.lora_target_modules)
            if not layers:
                targets = ", ".join(config.lora_target_modules) or "any"
                raise EraseError(f"`lora_target_modules` ({shorten(targets)}) matches none of the {len(wanted)} "
                                 f"{component} tensors {config.method} trains: name layers of its scope, e.g. to_k")
            lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=layers,
                              init_lora_weights=True)
            with torch.random.fork_rng(devices=[]):  # A's draw follows the run's seed, not the global RNG's state
                torch.manual_seed(config.seed)
                inject_adapter_in_model(lora, self.module, adapter_name=ADAPTER)
            self.layers = layers
            names = [n for n, _ in self.module.named_parameters() if ".lora_A." in n or ".lora_B." in n]
        elif frozen_base:  # θ*: the trained tensors' base values; the rest is shared
            self.base_values = frozen_copy(self.module, names)
        self.names = list(names)
        by_name = train_only(self.module, self.names, gradient_checkpointing)
        self.parameters = [by_name[n] for n in self.names]
        self.entries = sum(p.numel() for p in self.parameters)

    def base_output(self, model, *inputs):
        """`model`'s (the unwrapped module's) output with the base weights (call it under torch.no_grad)."""
        if self.lora:
            with self._adapters_off():
                return model(*inputs)
        from torch.func import functional_call

        return functional_call(model, self.base_values, inputs)

    @contextmanager
    def _adapters_off(self):
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.module.modules() if isinstance(m, LoraLayer)]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    def finish(self) -> None:
        """Back to inference; a LoRA is folded into the weights and kept in `factors` as {component:
        the adapter's state dict, scale folded into lora_B} (what the output's LoRA holds)."""
        freeze(self.module)
        self.factors = {}
        if not self.lora:
            return
        from peft.tuners.lora import LoraLayer

        factors = {}
        for name, layer in list(self.module.named_modules()):
            if isinstance(layer, LoraLayer):
                a, b = layer.lora_A[ADAPTER].weight.detach(), layer.lora_B[ADAPTER].weight.detach()
                factors[f"{name}.lora_A.weight"] = a.to("cpu", copy=True).contiguous()
                factors[f"{name}.lora_B.weight"] = (b * layer.scaling[ADAPTER]).to("cpu").contiguous()
                layer.merge(adapter_names=[ADAPTER])
                parent, _, child = name.rpartition(".")
                setattr(self.module.get_submodule(parent), child, layer.get_base_layer())
        self.factors = {self.component: factors}

    def artifacts(self) -> dict:
        """The method's in-memory results from this training: the LoRA the output writes, if one trained."""
        return {"lora_layers": self.factors} if self.lora else {}

    def add_to(self, record: dict, config) -> None:
        """Say in a method's erasure.json record what trained: `adapter`, and with a LoRA a summary row."""
        record_training(record, config, [self])


class TrainedComponents:
    """TrainedWeights of several pipeline components trained as one (AdvUnlearn on SDXL: both text
    encoders): one list of parameters for one optimizer; `finish`, `artifacts` and the record cover all."""

    def __init__(self, parts: list[TrainedWeights]):
        self.parts, self.lora = parts, parts[0].lora
        self.parameters = [p for part in parts for p in part.parameters]
        self.scope_share = sum(part.scope_entries for part in parts) / sum(part.module_entries for part in parts)

    def finish(self) -> None:
        for part in self.parts:
            part.finish()

    def artifacts(self) -> dict:
        return {"lora_layers": {c: f for part in self.parts for c, f in part.factors.items()}} if self.lora else {}

    def add_to(self, record: dict, config) -> None:
        record_training(record, config, self.parts)


def record_training(record: dict, config, parts: list[TrainedWeights]) -> None:
    """erasure.json's `adapter` for what `parts` trained, and with a LoRA a summary row per component."""
    entries, lora = sum(part.entries for part in parts), parts[0].lora
    record["adapter"] = {"kind": "lora" if lora else "full", "trained_entries": entries}
    if not lora:
        return
    record["adapter"] |= {"layers": sum(len(part.layers) for part in parts),
                          "share_of_module": entries / sum(part.module_entries for part in parts)}
    for part in parts:
        record.setdefault("summary", []).append(
            ["adapter", f"a rank-{config.lora_rank} LoRA (alpha {config.lora_alpha:g}) on {len(part.layers)} "
                        f"{part.component} layers, trained in place of their weights: {part.entries:,} entries, "
                        f"{part.entries / part.module_entries:.2%} of the {part.component}'s"])
