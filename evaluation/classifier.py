"""The user's local image classifier (a transformers image-classification folder, e.g. microsoft/resnet-50
downloaded): which of its classes is the concept, and its top-1 predictions. Class-wise evaluation
and the class-wise attack both judge with it. Nothing here imports torch until a model loads.
"""

import json
import os
from functools import cache

from ..erasure.errors import EraseError

MISSING_CLASSIFIER = ("pass a local image-classification folder "
                      "(e.g. `hf download microsoft/resnet-50 --local-dir resnet-50`)")


def classifier_class_index(classifier_path: str, concept: str, class_index: int | None = None) -> tuple[int, str]:
    """The class the classifier calls `concept` (its config's id2label, any of a label's
    comma-separated names, case and '_' ignored), or `class_index` when given: (index, label).
    Reads only config.json, so bad input is refused before anything loads."""
    config_file = os.path.join(classifier_path, "config.json")
    if not os.path.isfile(config_file):
        raise EraseError(f"classifier {classifier_path} has no config.json: {MISSING_CLASSIFIER}")
    with open(config_file) as f:
        labels = {int(k): v for k, v in json.load(f).get("id2label", {}).items()}
    if class_index is not None:
        if class_index not in labels:
            raise EraseError(f"--class-index {class_index} is not a class of {classifier_path} (0..{len(labels) - 1})")
        return class_index, labels[class_index]
    wanted = concept.lower().replace("_", " ").strip()
    found = [i for i, label in labels.items() if wanted in (n.lower().replace("_", " ").strip() for n in label.split(","))]
    if len(found) != 1:
        raise EraseError(f"{'no' if not found else 'more than one'} class of {classifier_path} is called {concept!r}: "
                         "pass --class-index with the class's index in the classifier's id2label")
    return found[0], labels[found[0]]


@cache
def load_classifier(classifier_path: str, batch_size: int = 64):
    """A local image classifier (a transformers folder) as a function: uint8 (N, H, W, 3) images -> top-1 indices.
    Loaded once per process: class-wise evaluation asks per class, the attack at every check."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    if not os.path.isdir(classifier_path):
        raise EraseError(f"classifier weights {classifier_path} not found: {MISSING_CLASSIFIER}")
    model = AutoModelForImageClassification.from_pretrained(classifier_path).eval()
    processor = AutoImageProcessor.from_pretrained(classifier_path)

    @torch.no_grad()
    def top1(images) -> torch.Tensor:
        return torch.cat([model(**processor(images=list(images[start:start + batch_size]), return_tensors="pt")).logits.argmax(-1)
                          for start in range(0, len(images), batch_size)])

    return top1
