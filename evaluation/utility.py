"""Utility metrics of an erased model: FID and KID (torchmetrics), CLIP score, classifier accuracy.

Everything loads from local files: no weights are downloaded here.
- FID/KID use a custom feature module when given (the shapes world uses its judge), else the
  standard 2048-d Inception features, which need torch-fidelity and its weights file.
- CLIP score takes a local CLIP folder. torchmetrics 1.9 crashes with transformers 5, whose
  get_image_features/get_text_features return an output object (torchmetrics#3407); the model
  is wrapped so both return the pooled projections, as torchmetrics expects.
- Class-wise UA = 1 - top-1 accuracy of a local image classifier on the erased class's images.
"""

import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..erasure.data import IMAGE_EXTENSIONS
from ..erasure.errors import EraseError

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception


def load_image(path: str, size: int | None = None) -> torch.Tensor:
    """One uint8 image (3, H, W), resized to size×size when given."""
    image = Image.open(path).convert("RGB")
    if size:
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def load_images(folder: str, size: int | None = None, minimum: int = 2) -> torch.Tensor:
    """uint8 images (N, 3, H, W) of a folder, resized to size×size when given."""
    if not os.path.isdir(folder):
        raise EraseError(f"image folder {folder} does not exist: give a folder of real images")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and ".tmp." not in f)
    if len(files) < minimum:
        raise EraseError(f"{folder} has {len(files)} images; FID/KID need at least {minimum}: add images")
    return torch.stack([load_image(os.path.join(folder, name), size) for name in files])


def inception_kwargs(weights_path: str | None) -> dict:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as err:
        raise EraseError("FID/KID with Inception features need torch-fidelity (pip install torch-fidelity torchvision), "
                         "or pass a custom feature extractor") from err
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_WEIGHTS)
    path = weights_path or cached
    if not os.path.isfile(path):
        raise EraseError(f"Inception weights not found: place {INCEPTION_WEIGHTS} at {cached} "
                         "(or pass its path as the Inception weights); they cannot be downloaded offline")
    return {"feature": 2048, "feature_extractor_weights_path": path}


def fid_kid(real: torch.Tensor, fake: torch.Tensor, feature: nn.Module | None = None,
            inception_weights: str | None = None, kid_subset_size: int = 100) -> dict:
    """FID and KID between image sets: uint8, or floats in [0, 1] (a custom `feature` module gets floats)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if min(len(real), len(fake)) < 2:
        raise EraseError(f"FID/KID need at least 2 images per side, got {len(real)} real and {len(fake)} generated")
    subset = min(kid_subset_size, len(real), len(fake))
    floats = real.is_floating_point()
    if feature is not None:
        if not floats:
            real, fake = real.float() / 255, fake.float() / 255
        fid = FrechetInceptionDistance(feature=feature)
        kid = KernelInceptionDistance(feature=RescaledFeatures(feature, real), subset_size=subset)
    else:
        kwargs = {**inception_kwargs(inception_weights), "normalize": floats}
        fid = FrechetInceptionDistance(**kwargs)
        kid = KernelInceptionDistance(subset_size=subset, **kwargs)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"FID": max(0.0, float(fid.compute())), "KID_mean": float(kid_mean), "KID_std": float(kid_std),
            "real_images": len(real), "generated_images": len(fake), "kid_subset_size": subset,
            "features": type(feature).__name__ if feature is not None else "inception-2048"}


class RescaledFeatures(nn.Module):
    """A custom extractor's features divided by their RMS over the real images (one constant).

    KID's cubic kernel (x·y/d + 1)^3 is meant for Inception-scale features; features of another
    scale blow it up (the shapes judge's gave KID -1e5 for identical sets). One global constant
    keeps the geometry; FID, which is scale-aware anyway, uses the raw features.
    """

    def __init__(self, feature: nn.Module, real: torch.Tensor):
        super().__init__()
        self.feature = feature
        self.num_features = feature.num_features
        with torch.no_grad():
            self.scale = float(feature(real).float().pow(2).mean().sqrt().clamp_min(1e-12))

    def forward(self, images):
        return self.feature(images) / self.scale


class PooledCLIP(nn.Module):
    """A CLIPModel whose get_*_features return the projected pooled tensors (what torchmetrics expects)."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, pixel_values):
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, input_ids, attention_mask=None):
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_score(images: torch.Tensor, prompts: list[str], clip_path: str, batch_size: int = 64) -> float:
    """torchmetrics CLIPScore (100 × cosine, floored at 0) of uint8 images and their prompts."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    if not os.path.isdir(clip_path):
        raise EraseError(f"CLIP model folder {clip_path} does not exist: download one (e.g. `hf download "
                         "openai/clip-vit-large-patch14 --local-dir clip-l`) and pass the folder")
    model, processor = PooledCLIP(CLIPModel.from_pretrained(clip_path).eval()), CLIPProcessor.from_pretrained(clip_path)
    metric = CLIPScore(model_name_or_path=lambda: (model, processor))
    for start in range(0, len(images), batch_size):
        metric.update(list(images[start:start + batch_size]), prompts[start:start + batch_size])
    return float(metric.compute())


@torch.no_grad()
def classifier_accuracy(images: torch.Tensor, class_index: int, classifier_path: str) -> float:
    """Top-1 accuracy of a local image classifier (a transformers folder) on uint8 (N, 3, H, W) images of one class."""
    from .classifier import load_classifier

    predicted = load_classifier(classifier_path)(images.permute(0, 2, 3, 1).numpy())
    return (predicted == class_index).float().mean().item()
