"""Loading a base Stable Diffusion pipeline and writing an erased one (the output contract):
a stock StableDiffusionPipeline (SD 1.x/2.x) or StableDiffusionXLPipeline folder that carries its
base's model profile, if any (and, for SEOT, its inference settings and pipeline.py)."""

import hashlib
import json
import os
import shutil

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from .errors import EraseError, shorten
from .folders import TRAINABLE_COMPONENTS, BaseModel, weight_files
from .profile import PROFILE_FILE

PIPELINE_CLASSES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}  # by BaseModel.family
WEIGHT_COMPONENTS = (*TRAINABLE_COMPONENTS, "vae")  # text_encoder_2: SDXL's


def weight_components(pipeline, names: tuple = WEIGHT_COMPONENTS) -> dict:
    """The pipeline's models by component name, of `names` (SDXL's second text encoder included where it has one)."""
    return {name: getattr(pipeline, name) for name in names if getattr(pipeline, name, None) is not None}


def is_sdxl(pipeline) -> bool:
    """Whether the pipeline conditions on SDXL's two text encoders (any SDXL pipeline class)."""
    return getattr(pipeline, "text_encoder_2", None) is not None


@torch.no_grad()
def weights_fingerprint(pipeline) -> str:
    """A digest of the UNet, text encoder and VAE weights (per-tensor sums): the cache key of data
    the pipeline generates. It follows the weights, so a fine-tuned pipeline never reuses stale data."""
    digest = hashlib.sha256()
    for model in weight_components(pipeline).values():
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
        digest.update(sums.cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def suppressing_pipeline(folder: str) -> bool:
    """Whether `folder` is an SEOT output: its model_index.json names words to suppress at inference."""
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        return False
    with open(index) as f:
        return bool(json.load(f).get("suppressed_words"))


def suppressing_classes() -> dict:
    """SEOT's pipeline classes by BaseModel.family (imported when asked for)."""
    from ..pipelines import StableDiffusionSuppressEOTPipeline, StableDiffusionXLSuppressEOTPipeline

    return {"sd": StableDiffusionSuppressEOTPipeline, "sdxl": StableDiffusionXLSuppressEOTPipeline}


def suppressing_pipeline_files(pipeline) -> dict[str, str]:
    """What an SEOT output of `pipeline` carries to suppress when loaded with custom_pipeline: its
    family's pipeline file as pipeline.py and the module it imports, by name in the folder."""
    import inspect

    from ..pipelines import suppress_eot

    pipeline_class = suppressing_classes()["sdxl" if is_sdxl(pipeline) else "sd"]
    return {"pipeline.py": inspect.getfile(pipeline_class), "suppress_eot.py": suppress_eot.__file__}


def load_pipeline(base: BaseModel, allow_pickle: bool = False, pipeline_classes: dict | None = None):
    """Load the base pipeline in fp32 (the master weights of fine-tuning), safetensors only by default;
    an SEOT output with this package's SEOT pipeline class (no code from the folder runs); with
    `pipeline_classes` (by family), that class."""
    if pipeline_classes:
        pipeline_class = pipeline_classes[base.family]
    elif suppressing_pipeline(base.path):
        pipeline_class = suppressing_classes()[base.family]
    else:
        pipeline_class = PIPELINE_CLASSES[base.family]
    try:
        return pipeline_class.from_pretrained(base.path, use_safetensors=None if allow_pickle else True)
    except OSError as err:
        raise EraseError(f"could not load {base.name}: {err}".splitlines()[0]) from err


def fuse_adapter(pipeline, adapter: str) -> None:
    """Load an erase output's LoRA onto `pipeline` and fuse it into the weights, as plain diffusers does."""
    pipeline.load_lora_weights(adapter)
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()


def load_model_or_adapter(model: str, allow_pickle: bool = False, facilitated_transport: bool = False):
    """A model to generate with: a pipeline folder, a Hub id or `shapes`; or an `output_format lora`
    erase output, loaded onto the base model its erasure.json names and fused (what `sd-erase apply`
    writes), or with `facilitated_transport` (SPM outputs) loaded as a membrane weighed per prompt."""
    from .folders import is_adapter_only, resolve_model
    from .lora_export import check_adapter_fits

    adapter = os.path.isdir(model) and is_adapter_only(model)
    if facilitated_transport and not adapter:
        raise EraseError(f"facilitated transport weighs an SPM adapter per prompt, and {shorten(model)} is no adapter "
                         "output: erase with --method spm (its default --output-format lora)")
    if not adapter:
        return load_pipeline(resolve_model(model, allow_pickle=allow_pickle), allow_pickle)
    with open(os.path.join(model, "erasure.json")) as f:
        record = json.load(f)
    if facilitated_transport and record.get("method") != "spm":
        raise EraseError(f"facilitated transport weighs SPM membranes, and {shorten(model)} was erased with "
                         f"{record.get('method')}: leave out --facilitated-transport")
    made_on = record["base_model"]
    base = resolve_model(made_on["id"], made_on.get("revision"), allow_pickle)
    check_adapter_fits(model, base.path, base.name)
    if facilitated_transport:
        from ..pipelines.spm_transport import StableDiffusionSPMPipeline, StableDiffusionXLSPMPipeline

        pipeline = load_pipeline(base, allow_pickle,
                                 {"sd": StableDiffusionSPMPipeline, "sdxl": StableDiffusionXLSPMPipeline})
        pipeline.load_membranes([model])
        return pipeline
    pipeline = load_pipeline(base, allow_pickle)
    fuse_adapter(pipeline, model)
    return pipeline


def save_stock_pipeline(pipeline, folder: str, base_folder: str | None = None, **save_kwargs) -> None:
    """Save as a stock `StableDiffusionPipeline` or `StableDiffusionXLPipeline` (what plain
    `DiffusionPipeline.from_pretrained` loads).

    A subclass name in model_index.json would break plain diffusers, so the components are
    re-wrapped in the stock class. transformers 5 saves only tokenizer.json; the base's
    vocab.json/merges.txt are copied along so transformers 4 users can load the folder too, and
    so is its model profile: the erased model is still a model of the same kind.
    """
    from ..pipelines.suppress_eot import suppression_of

    components = {name: getattr(pipeline, name) for name in pipeline.components}
    if is_sdxl(pipeline):
        stock = StableDiffusionXLPipeline(**components, **{k: pipeline.config[k] for k in ("force_zeros_for_empty_prompt",)})
    else:
        stock = StableDiffusionPipeline(
            **components, requires_safety_checker=getattr(pipeline.config, "requires_safety_checker", False))
    stock.save_pretrained(folder, **{"safe_serialization": True, **save_kwargs})
    suppression = suppression_of(pipeline)
    if suppression:  # SEOT: its settings beside the stock ones, and the pipeline applying them
        index = os.path.join(folder, "model_index.json")
        with open(index) as f:
            settings = json.load(f)
        with open(index, "w") as f:
            json.dump({**settings, **suppression}, f, indent=2, sort_keys=True)
        for name, source in suppressing_pipeline_files(pipeline).items():
            shutil.copyfile(source, os.path.join(folder, name))
    if base_folder:
        for name in (*(os.path.join(tokenizer, file) for tokenizer in ("tokenizer", "tokenizer_2")
                       for file in ("vocab.json", "merges.txt")), PROFILE_FILE):
            src, dst = os.path.join(base_folder, name), os.path.join(folder, name)
            if os.path.isfile(src) and not os.path.exists(dst):
                shutil.copyfile(src, dst)


@torch.no_grad()
def changed_weights(pipeline, base_path: str) -> tuple[dict, dict[str, list[str]]]:
    """Per component, how many weights differ from the base model's safetensors files (erasure.json's
    `changed`), and the names of the tensors that do (what the LoRA export factors).

    Read tensor by tensor from disk, so it costs no second copy of the model in memory. `bytes`
    counts the changed entries at their stored width: the size of a sparse diff of the edit.
    """
    from safetensors import safe_open

    changes, changed_names = {}, {}
    for component in WEIGHT_COMPONENTS:
        files = weight_files(os.path.join(base_path, component))
        if not files:
            continue
        state = getattr(pipeline, component).state_dict()
        entries = total = tensors = size = 0
        names = []
        for file in files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    if key not in state:
                        continue
                    new = state[key].detach().cpu()
                    stored = f.get_tensor(key).to(new.dtype)
                    # torch.equal first: 10× faster than counting, and most tensors are unchanged
                    differs = 0 if torch.equal(new, stored) else int((new != stored).sum())
                    total += new.numel()
                    entries += differs
                    tensors += differs > 0
                    if differs:
                        names.append(key)
                    size += differs * new.element_size()
        changes[component] = {"entries": entries, "of": total, "tensors": tensors, "bytes": size}
        changed_names[component] = names
    return changes, changed_names
