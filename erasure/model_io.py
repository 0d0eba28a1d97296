"""Loading a base Stable Diffusion pipeline and writing an erased one (the output contract).

An erase writes `OUT/` only when it is complete: everything goes to the sibling
`OUT.incomplete/` (which also holds the resumable checkpoints) and is renamed at the end.
"""

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from .errors import EraseError

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WORLD_MARKER = "sd_erasure_world.json"  # written by evaluation/train_shapes.py into the bundled model
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class BaseModel:
    """Where the base pipeline came from: what the user named, the local folder, the Hub commit."""

    name: str
    path: str
    revision: str | None = None

    @property
    def world(self) -> str | None:
        """The synthetic world the model was trained on (the bundled shapes model), if any."""
        marker = os.path.join(self.path, WORLD_MARKER)
        if not os.path.isfile(marker):
            return None
        with open(marker) as f:
            return json.load(f)["world"]

    def recommended(self, method: str, concept: str) -> dict:
        """Settings of `method` recommended for this model's world (empty for ordinary checkpoints)."""
        if self.world == "shapes":
            from evaluation.shapes import recommended_settings

            return recommended_settings(method, concept)
        return {}


@torch.no_grad()
def weights_fingerprint(pipeline) -> str:
    """A digest of the UNet, text encoder and VAE weights (per-tensor sums): the cache key of data
    the pipeline generates. It follows the weights, so a fine-tuned pipeline never reuses stale data."""
    digest = hashlib.sha256()
    for model in (pipeline.unet, pipeline.text_encoder, pipeline.vae):
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
        digest.update(sums.cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def resolve_model(model: str, revision: str | None = None, allow_pickle: bool = False) -> BaseModel:
    """Turn `--model` (a local diffusers folder, a Hub id, or `shapes` for the bundled model) into a checked local folder."""
    if not model or not model.strip():
        raise EraseError("--model is empty: give a diffusers folder or a Hub id such as CompVis/stable-diffusion-v1-4")
    if model == "shapes" and not os.path.exists(model):  # the model bundled with the package
        from evaluation.shapes import MODEL_DIR

        base = BaseModel(name="shapes", path=MODEL_DIR)
    elif os.path.isdir(model):
        base = BaseModel(name=model, path=model)
    elif os.path.exists(model):
        raise EraseError(f"--model {model} is a file, not a folder: give the diffusers pipeline folder (the one with model_index.json)")
    elif model.startswith((".", "/", "~")) or not HUB_ID.match(model):
        raise EraseError(f"model path {model} does not exist: check the path, or give a Hub id such as CompVis/stable-diffusion-v1-4")
    else:
        try:
            path = DiffusionPipeline.download(model, revision=revision, use_safetensors=None if allow_pickle else True)
        except Exception as err:  # the hub client raises many types; the user needs one line
            raise EraseError(
                f"could not get {model!r} from the Hub ({type(err).__name__}): check the id and your network or "
                "`hf auth login`; offline, pass a local diffusers folder instead"
            ) from err
        base = BaseModel(name=model, path=path, revision=os.path.basename(os.path.normpath(path)))
    check_sd_folder(base, allow_pickle)
    return base


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def check_sd_folder(base: BaseModel, allow_pickle: bool = False) -> None:
    index_file = os.path.join(base.path, "model_index.json")
    if not os.path.isfile(index_file):
        raise EraseError(
            f"{base.name} is not a Stable Diffusion pipeline folder (no model_index.json): point --model at a "
            "folder written by save_pretrained, or a Hub id such as CompVis/stable-diffusion-v1-4"
        )
    with open(index_file) as f:
        index = json.load(f)
    missing = [c for c in SD_COMPONENTS if c not in index]
    if "StableDiffusion" not in str(index.get("_class_name")) or missing:
        raise EraseError(
            f"{base.name} holds a {index.get('_class_name')} pipeline, not Stable Diffusion 1.x/2.x"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + ": give a StableDiffusionPipeline folder or Hub id"
        )
    for component in ("unet", "vae", "text_encoder", "safety_checker"):
        folder = os.path.join(base.path, component)
        files = os.listdir(folder) if os.path.isdir(folder) else []
        pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickled and not allow_pickle and not any(f.endswith(".safetensors") for f in files):
            raise EraseError(
                f"{base.name} has only pickled weights in {component}/ ({pickled[0]}), which can run code when loaded: "
                "convert it to safetensors, or pass --allow-pickle if you trust its source"
            )


def load_pipeline(base: BaseModel, allow_pickle: bool = False):
    """Load the base pipeline in fp32 (the master weights of fine-tuning), safetensors only by default."""
    try:
        return StableDiffusionPipeline.from_pretrained(base.path, use_safetensors=None if allow_pickle else True)
    except OSError as err:
        raise EraseError(f"could not load {base.name}: {err}".splitlines()[0]) from err


def save_stock_pipeline(pipeline, folder: str, tokenizer_source: str | None = None, **save_kwargs) -> None:
    """Save as a stock `StableDiffusionPipeline` (what plain `DiffusionPipeline.from_pretrained` loads).

    A subclass name in model_index.json would break plain diffusers, so the components are
    re-wrapped in the stock class. transformers 5 saves only tokenizer.json; the base's
    vocab.json/merges.txt are copied along so transformers 4 users can load the folder too.
    """
    components = {name: getattr(pipeline, name) for name in pipeline.components}
    stock = StableDiffusionPipeline(
        **components, requires_safety_checker=getattr(pipeline.config, "requires_safety_checker", False)
    )
    stock.save_pretrained(folder, **{"safe_serialization": True, **save_kwargs})
    if tokenizer_source:
        for name in ("vocab.json", "merges.txt"):
            src = os.path.join(tokenizer_source, "tokenizer", name)
            dst = os.path.join(folder, "tokenizer", name)
            if os.path.isfile(src) and not os.path.exists(dst):
                shutil.copyfile(src, dst)


def differing_keys(path: str, record: dict) -> list[str]:
    """Keys whose values differ between `record` and the JSON record saved at `path` (none if there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        before = json.load(f)
    return sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))


class OutputFolder:
    """`OUT/` appears only when complete; the work happens in `OUT.incomplete/` beside it."""

    def __init__(self, path: str, overwrite: bool = False, resume: bool = False):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.partial = self.path + ".incomplete"
        self.overwrite = overwrite
        self.resume = resume

    def check(self) -> None:
        """Refuse, before anything is written, what would overwrite the user's files."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise EraseError(f"--output {self.path} is a file: choose a folder path")
        if os.path.exists(self.path) and not self.overwrite:
            raise EraseError(f"output {self.path} already exists: choose another --output, or pass --overwrite to replace it")
        if os.path.isdir(self.partial) and not (self.resume or self.overwrite):
            raise EraseError(
                f"{self.partial} holds an interrupted run: pass --resume-from-checkpoint latest to continue it, "
                "or --overwrite to start again"
            )

    def begin(self) -> None:
        if self.overwrite and not self.resume and os.path.isdir(self.partial):
            shutil.rmtree(self.partial)
        os.makedirs(self.partial, exist_ok=True)

    def commit(self) -> None:
        """Move the finished folder into place; an old OUT (with --overwrite) is removed only now."""
        if os.path.isdir(self.path):
            shutil.rmtree(self.path)
        os.rename(self.partial, self.path)


@torch.no_grad()
def changed_weights(pipeline, base_path: str) -> dict:
    """Per component, how many weights differ from the base model's safetensors files.

    Read tensor by tensor from disk, so it costs no second copy of the model in memory. `bytes`
    counts the changed entries at their stored width: the size of a sparse diff of the edit.
    """
    from safetensors import safe_open

    changes = {}
    for component in ("unet", "text_encoder", "vae"):
        folder = os.path.join(base_path, component)
        # the default weights (model.safetensors, shards), not variants such as model.fp16.safetensors
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors") and f.count(".") == 1) \
            if os.path.isdir(folder) else []
        if not files:
            continue
        state = getattr(pipeline, component).state_dict()
        entries = total = tensors = size = 0
        for file in files:
            with safe_open(os.path.join(folder, file), framework="pt") as f:
                for key in f.keys():
                    if key not in state:
                        continue
                    new = state[key].detach().cpu()
                    differs = int((new != f.get_tensor(key).to(new.dtype)).sum())
                    total += new.numel()
                    entries += differs
                    tensors += differs > 0
                    size += differs * new.element_size()
        changes[component] = {"entries": entries, "of": total, "tensors": tensors, "bytes": size}
    return changes
