"""The shapes-world judge: a small CNN that names the object and the style of a 32×32 image.

Each head has a "none" class (blank or unrecognisable images; shapes in grey or black for the
style head), so an erased model that draws nothing is not counted as drawing some shape. Its
penultimate layer is the feature space of the shapes world's FID.
"""

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .shapes import NONE, OBJECTS, STYLES, dataset, to_tensor

OBJECT_LABELS = (*OBJECTS, NONE)
STYLE_LABELS = (*STYLES, NONE)


class ShapesJudge(nn.Module):
    num_features = 64  # read by torchmetrics when the judge is FID's feature extractor

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.object_head = nn.Linear(64, len(OBJECT_LABELS))
        self.style_head = nn.Linear(64, len(STYLE_LABELS))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 64) features of images in [0, 1]."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        return self.object_head(features), self.style_head(features)

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 512) -> tuple[list[str], list[str]]:
        objects, styles = [], []
        for chunk in images.split(batch_size):
            object_logits, style_logits = self(chunk)
            objects += [OBJECT_LABELS[i] for i in object_logits.argmax(1).tolist()]
            styles += [STYLE_LABELS[i] for i in style_logits.argmax(1).tolist()]
        return objects, styles


class JudgeFeatures(nn.Module):
    """The judge's features as a torchmetrics FID/KID feature extractor (images in [0, 1])."""

    num_features = ShapesJudge.num_features

    def __init__(self, judge: ShapesJudge):
        super().__init__()
        self.judge = judge

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(images.float())


def load_judge(path: str) -> ShapesJudge:
    judge = ShapesJudge()
    judge.load_state_dict(load_file(path))
    return judge.eval()


def _labels(samples):
    return (torch.tensor([OBJECT_LABELS.index(s.object) for s in samples]),
            torch.tensor([STYLE_LABELS.index(s.style) for s in samples]))


def accuracy(judge: ShapesJudge, samples) -> dict[str, float]:
    objects, styles = judge.classify(to_tensor([s.image for s in samples]))
    return {"object": sum(o == s.object for o, s in zip(objects, samples)) / len(samples),
            "style": sum(st == s.style for st, s in zip(styles, samples)) / len(samples)}


def train_judge(num_samples: int = 24000, epochs: int = 6, seed: int = 0, show_progress: bool = True) -> ShapesJudge:
    """Train on fresh renders (with blank and colourless negatives), light pixel noise as augmentation."""
    torch.manual_seed(seed)
    samples = dataset(num_samples, seed=seed, with_none=True)
    images = to_tensor([s.image for s in samples])
    object_labels, style_labels = _labels(samples)
    judge = ShapesJudge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (num_samples // 128)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    progress = tqdm(total=steps, desc="judge", disable=not show_progress)
    for _ in range(epochs):
        order = torch.randperm(num_samples)
        for start in range(0, num_samples - 127, 128):
            batch = order[start:start + 128]
            noisy = (images[batch] + 0.03 * torch.randn_like(images[batch])).clamp(0, 1)
            object_logits, style_logits = judge(noisy)
            loss = F.cross_entropy(object_logits, object_labels[batch]) + F.cross_entropy(style_logits, style_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.3f}")
    return judge.eval()


def save_judge(judge: ShapesJudge, path: str) -> None:
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, path)
