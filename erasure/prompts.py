"""Default prompts for a concept, following SalUn's two protocols.

- Nudity: forget "a photo of a nude person", retain and misaligned "a photo of a person wearing clothes".
- Anything else (class-wise): forget "a photo of {concept}", retain and misaligned "a photo".
  The class-wise protocol maps each forget class onto another class; pass
  `--misaligned-prompt` / `--retain-prompt` with your other classes to do exactly that.
A model profile (erasure/profile.py) may give a concept's prompts instead, and the user's
prompts always win over both.

AdvUnlearn's retain set is "a photo of {object}" over the COCO object categories (its
`coco_object` prompt set); `COCO_OBJECTS` lists the 80 category names.
"""

from dataclasses import dataclass

NUDITY_CONCEPTS = {"nudity", "nude", "naked", "nakedness", "nsfw", "nude person", "nude people"}


@dataclass
class ConceptPrompts:
    forget: list[str]
    retain: list[str]
    kind: str  # "nudity" or "class-wise": decides method defaults such as the retain loss weight


def preset_prompts(concept: str) -> ConceptPrompts:
    concept = concept.strip()
    if concept.lower() in NUDITY_CONCEPTS:
        return ConceptPrompts(["a photo of a nude person"], ["a photo of a person wearing clothes"], "nudity")
    return ConceptPrompts([f"a photo of {concept}"], ["a photo"], "class-wise")


COCO_OBJECTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def coco_object_prompts(concept: str) -> list[str]:
    """'a photo of {object}' for every COCO category that does not name the concept (nor the concept it)."""
    concept = concept.strip().lower()
    return [f"a photo of {name}" for name in COCO_OBJECTS if name not in concept and concept not in name]
