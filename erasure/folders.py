"""Input and output folders, checked before anything heavy loads (this module imports no torch).

- The base model: a local diffusers folder, a Hub id (downloaded), or the name of a model that
  ships inside the package (BUNDLED_MODELS, filled by sd_erasure/__init__.py).
- The output: an erase writes `OUT/` only when it is complete: everything goes to the sibling
  `OUT.incomplete/` (which also holds the resumable checkpoints) and is renamed at the end.
"""

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property

from .errors import EraseError, shorten
from .profile import ModelProfile

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = (*SD_COMPONENTS, "text_encoder_2", "tokenizer_2")
TRAINABLE_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # what methods change, and LoRA files hold
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
BUNDLED_MODELS: dict[str, str] = {}  # name `--model` takes -> folder inside the installed package


@dataclass
class BaseModel:
    """Where the base pipeline came from: what the user named, the local folder, the Hub commit."""

    name: str
    path: str
    revision: str | None = None

    @cached_property
    def family(self) -> str:
        """`sdxl` for a StableDiffusionXLPipeline folder, else `sd` (1.x and 2.x share one pipeline class)."""
        return pipeline_family(pipeline_class(self.path))

    @cached_property
    def profile(self) -> ModelProfile | None:
        """The settings the model folder recommends (sd_erasure_profile.json), if it has any (read once)."""
        return ModelProfile.load(self.path)


def resolve_model(model: str, revision: str | None = None, allow_pickle: bool = False) -> BaseModel:
    """Turn `--model` (a local diffusers folder, a Hub id, or `shapes` for the bundled model) into a checked local folder."""
    if not model or not model.strip():
        raise EraseError("`model` is empty: give a diffusers folder or a Hub id such as CompVis/stable-diffusion-v1-4")
    if model in BUNDLED_MODELS and not os.path.exists(model):
        base = BaseModel(name=model, path=BUNDLED_MODELS[model])
    elif os.path.isdir(model):
        base = BaseModel(name=model, path=model)
    elif os.path.exists(model):
        raise EraseError(f"`model` {shorten(model)} is a file, not a folder: give the diffusers pipeline folder (the one with model_index.json)")
    elif model.startswith((".", "/", "~")) or not HUB_ID.match(model):
        raise EraseError(f"model path {shorten(model)} does not exist: check the path, or give a Hub id such as CompVis/stable-diffusion-v1-4")
    else:
        from diffusers import DiffusionPipeline

        try:
            path = DiffusionPipeline.download(model, revision=revision, use_safetensors=None if allow_pickle else True)
        except Exception as err:  # the hub client raises many types; the user needs one line
            raise EraseError(
                f"could not get {shorten(model)} from the Hub ({type(err).__name__}): check the id and your network or "
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
            f"{base.name} is not a Stable Diffusion pipeline folder (no model_index.json): point `model` at a "
            "folder written by save_pretrained, or a Hub id such as CompVis/stable-diffusion-v1-4"
        )
    with open(index_file) as f:
        index = json.load(f)
    family = pipeline_family(index.get("_class_name"))
    missing = [c for c in (SDXL_COMPONENTS if family == "sdxl" else SD_COMPONENTS) if c not in index]
    if "StableDiffusion" not in str(index.get("_class_name")) or missing:
        raise EraseError(
            f"{base.name} holds a {index.get('_class_name')} pipeline, not Stable Diffusion 1.x/2.x/XL"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + ": give a StableDiffusionPipeline or StableDiffusionXLPipeline folder or Hub id"
        )
    for component in ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker"):
        folder = os.path.join(base.path, component)
        files = os.listdir(folder) if os.path.isdir(folder) else []
        pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickled and not allow_pickle and not any(f.endswith(".safetensors") for f in files):
            raise EraseError(
                f"{base.name} has only pickled weights in {component}/ ({pickled[0]}), which can run code when loaded: "
                "convert it to safetensors, or pass --allow-pickle if you trust its source"
            )


def pipeline_class(folder: str) -> str | None:
    """The pipeline class a folder's model_index.json names (None where it has none: an adapter-only output)."""
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        return None
    with open(index) as f:
        return json.load(f).get("_class_name")


def pipeline_family(class_name) -> str:
    """`sdxl` for SDXL pipeline classes (StableDiffusionXLPipeline and its img2img/inpaint kin), else `sd`."""
    return "sdxl" if str(class_name).startswith("StableDiffusionXL") else "sd"


def differing_keys(path: str, record: dict) -> list[str]:
    """Keys whose values differ between `record` and the JSON record saved at `path` (none if there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        before = json.load(f)
    return sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))


def weight_files(folder: str) -> list[str]:
    """Paths of a component folder's default safetensors weights (model.safetensors, shards), not
    variants such as model.fp16.safetensors; none when the folder does not exist."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".safetensors") and f.count(".") == 1]


LORA_FILE = "pytorch_lora_weights.safetensors"  # the adapter file `pipe.load_lora_weights(folder)` looks for


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
            raise EraseError(f"`output_dir` {self.path} is a file: choose a folder path")
        if os.path.exists(self.path) and not self.overwrite:
            raise EraseError(f"output {self.path} already exists: choose another `output_dir`, or pass `overwrite` to replace it")
        if os.path.isdir(self.partial) and not (self.resume or self.overwrite):
            raise EraseError(
                f"{self.partial} holds an interrupted run: pass `resume_from_checkpoint` latest to continue it, "
                "or `overwrite` to start again"
            )

    def check_writable(self) -> None:
        """Refuse a place where the output cannot be written (read-only file system, no permission)."""
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=".sd-erase-probe-", dir=parent))
        except OSError as err:
            raise EraseError(f"cannot write `output_dir` {shorten(self.path, 80)}: {err.strerror or err}; "
                             "choose a folder you can write to") from None

    def begin(self) -> None:
        if self.overwrite and not self.resume and os.path.isdir(self.partial):
            shutil.rmtree(self.partial)
        os.makedirs(self.partial, exist_ok=True)

    def commit(self) -> None:
        """Move the finished folder into place; an old OUT (with --overwrite) is removed only now."""
        if os.path.isdir(self.path):
            shutil.rmtree(self.path)
        os.rename(self.partial, self.path)


def is_adapter_only(folder: str) -> bool:
    """An `--output-format lora` output: the LoRA and erasure.json, no pipeline."""
    return os.path.isfile(os.path.join(folder, LORA_FILE)) and not os.path.isfile(os.path.join(folder, "model_index.json"))


def model_family(model: str) -> str | None:
    """`sd` or `sdxl` for a pipeline folder, a bundled model's name or an erase output (an adapter:
    its base's family); None where it cannot be told without downloading (a Hub id)."""
    folder = BUNDLED_MODELS.get(model, model) if not os.path.exists(model) else model
    class_name = pipeline_class(folder)
    if class_name is not None:
        return pipeline_family(class_name)
    record = os.path.join(folder, "erasure.json")
    if os.path.isfile(record):
        with open(record) as f:
            return json.load(f)["base_model"].get("family", "sd")
    return None


def base_of(model: str) -> str | None:
    """The base model an erase output names in its erasure.json (None for any other folder)."""
    record = os.path.join(model, "erasure.json")
    if os.path.isfile(record):
        with open(record) as f:
            return json.load(f)["base_model"]["id"]
    return None
