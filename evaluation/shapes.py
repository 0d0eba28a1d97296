"""The shapes world: 32×32 images of coloured shapes, rendered deterministically from a seed.

Objects (circle, square, triangle, cross, star) × styles (red, green, blue, yellow, purple) on
white, random size and position. Captions use synonyms for some styles (crimson and scarlet are
red, azure is blue, violet is purple) so an erasure can be tested beyond its exact word.
"""

import json
import math
import os
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..erasure.profile import PROFILE_FILE, caption_concepts

OBJECTS = ("circle", "square", "triangle", "cross", "star")
STYLES = ("red", "green", "blue", "yellow", "purple")
SYNONYMS = {"red": ("crimson", "scarlet"), "blue": ("azure",), "purple": ("violet",)}
COLORS = {"red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 70, 215), "yellow": (235, 195, 25),
          "purple": (140, 45, 175)}
# Shapes in these colours belong to no style: the judge learns to answer "none" for them.
NO_STYLE_COLORS = ((128, 128, 128), (25, 25, 25))
TEMPLATES = ("a {style} {object}", "a drawing of a {style} {object}", "a {style} {object} on a white background")
NONE = "none"
SIZE = 32
RADIUS = (6.5, 11.5)  # a shape's size range, in pixels
_SUPERSAMPLE = 4  # drawn at 128 px and downsampled: smooth edges


def style_words(style: str) -> tuple[str, ...]:
    return (style, *SYNONYMS.get(style, ()))


def concept_kind(concept: str) -> str:
    """'object' or 'style' for a world concept (a style synonym counts as its style)."""
    if concept in OBJECTS:
        return "object"
    if canonical_style(concept):
        return "style"
    raise ValueError(f"{concept!r} is not a shapes-world concept: use one of {', '.join(OBJECTS + STYLES)}")


def canonical_style(word: str) -> str | None:
    return next((s for s in STYLES if word in style_words(s)), None)


def vocabulary() -> list[str]:
    words = set(OBJECTS) | {w for s in STYLES for w in style_words(s)}
    for template in TEMPLATES:
        words |= set(template.replace("{style}", "").replace("{object}", "").split())
    return sorted(words)


@dataclass(frozen=True)
class Prompt:
    text: str
    object: str
    style: str  # canonical style (crimson -> red)


def prompts(template_ids=(0,)) -> list[Prompt]:
    """Every object × every style word (synonyms included) in the chosen caption templates."""
    return [Prompt(TEMPLATES[t].format(style=word, object=obj), obj, style)
            for t in template_ids for obj in OBJECTS for style in STYLES for word in style_words(style)]


def _shape_points(obj: str, cx: float, cy: float, r: float, angle: float):
    if obj == "triangle":
        return [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    if obj == "star":
        return [(cx + (r if k % 2 == 0 else 0.42 * r) * math.cos(angle + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else 0.42 * r) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    raise ValueError(obj)


def render(obj: str, color: tuple[int, int, int], rng: random.Random, radius=RADIUS) -> Image.Image:
    """One object of `color` on white, random size in `radius` and position (and orientation for polygons)."""
    s = _SUPERSAMPLE
    image = Image.new("RGB", (SIZE * s, SIZE * s), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(*radius)
    cx, cy = rng.uniform(r + 1, SIZE - r - 1), rng.uniform(r + 1, SIZE - r - 1)
    jitter = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in color)
    box = [(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s]
    if obj == "circle":
        draw.ellipse(box, fill=jitter)
    elif obj == "square":
        side = r * 0.85
        draw.rectangle([(cx - side) * s, (cy - side) * s, (cx + side) * s, (cy + side) * s], fill=jitter)
    elif obj == "cross":
        arm = r * 0.33
        draw.rectangle([(cx - r) * s, (cy - arm) * s, (cx + r) * s, (cy + arm) * s], fill=jitter)
        draw.rectangle([(cx - arm) * s, (cy - r) * s, (cx + arm) * s, (cy + r) * s], fill=jitter)
    else:
        angle = -math.pi / 2 + rng.uniform(-0.25, 0.25)
        draw.polygon([(x * s, y * s) for x, y in _shape_points(obj, cx, cy, r * 1.1, angle)], fill=jitter)
    return image.resize((SIZE, SIZE), Image.LANCZOS)


def render_blank(rng: random.Random) -> Image.Image:
    """Images with no recognisable shape: blank, noise, smooth colour washes, scattered specks."""
    kind = rng.randrange(4)
    np_rng = np.random.default_rng(rng.randrange(2**32))
    if kind == 0:
        array = np.full((SIZE, SIZE, 3), 255 - rng.randint(0, 30), np.int16) + np_rng.integers(-6, 7, (SIZE, SIZE, 3))
    elif kind == 1:
        array = np_rng.integers(0, 256, (SIZE, SIZE, 3))
    elif kind == 2:
        low = np_rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        array = np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.BICUBIC), np.int16)
    else:
        array = np.full((SIZE, SIZE, 3), 255, np.int16)
        for _ in range(rng.randint(3, 12)):
            y, x = rng.randrange(SIZE - 2), rng.randrange(SIZE - 2)
            array[y:y + 2, x:x + 2] = np_rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


@dataclass
class Sample:
    image: Image.Image
    caption: str
    object: str  # an OBJECTS name or "none"
    style: str  # a STYLES name or "none"


def dataset(n: int, seed: int, with_none: bool = False, template_ids=(0, 1, 2), radius=RADIUS) -> list[Sample]:
    """n samples, deterministic in (n, seed), captioned with the TEMPLATES of `template_ids`, shapes sized
    in `radius`. With
    `with_none`, a share are judge-only negatives: blank/noise images (object and style none) and
    grey or black shapes (style none)."""
    templates = [TEMPLATES[i] for i in template_ids]
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        roll = rng.random() if with_none else 1.0
        if roll < 0.08:
            samples.append(Sample(render_blank(rng), "", NONE, NONE))
            continue
        obj = rng.choice(OBJECTS)
        if roll < 0.16:
            samples.append(Sample(render(obj, rng.choice(NO_STYLE_COLORS), rng, radius), "", obj, NONE))
            continue
        style = rng.choice(STYLES)
        caption = rng.choice(templates).format(style=rng.choice(style_words(style)), object=obj)
        samples.append(Sample(render(obj, COLORS[style], rng, radius), caption, obj, style))
    return samples


def to_tensor(images) -> "torch.Tensor":
    """PIL images -> float tensor (N, 3, 32, 32) in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
MODEL_DIR = os.path.join(ASSETS, "shapes-sd")
JUDGE_FILE = os.path.join(ASSETS, "shapes-judge.safetensors")


PROFILE_DESCRIPTION = ("The shapes world: 32x32 images of one coloured shape on white, captioned "
                       "'a {style} {object}'. Concepts are its objects and styles (synonyms included); each concept's "
                       "prompts follow SalUn's class-wise protocol on the world's captions.")


def world_concepts() -> dict[str, dict]:
    """Every concept's prompts on this world (synonyms included), from its caption template 0: what
    a model profile gives the methods (erasure/profile.py's `caption_concepts`)."""
    return caption_concepts(TEMPLATES[0], {"object": [[o] for o in OBJECTS],
                                           "style": [list(style_words(s)) for s in STYLES]})


# Where a concept's forget captions are steered, where the slot's next concept (caption_concepts)
# measured worse on the bundled model. Blue -> yellow (SalUn, profile settings, judge at 4 images per
# prompt, 2026-11-29): UA 1.00 but IRA 0.79, blue turned purple and dragged yellow to orange and red
# to crimson; -> red: UA 1.00, IRA 0.93, CRA 0.99; -> green UA 0.33, -> purple UA 0.30.
STEERED_TO = {"blue": "red"}


def world_profile() -> dict:
    """The model profile (sd_erasure_profile.json) of a shapes-world model: the world's concepts with
    their prompts, made from the world's definition here (STEERED_TO applied to the misaligned
    prompts), and the per-method settings and notes measured on the bundled model, which its profile
    file holds (the source of those)."""
    with open(os.path.join(MODEL_DIR, PROFILE_FILE)) as f:
        bundled = json.load(f)
    concepts, settings = list(OBJECTS) + [w for s in STYLES for w in style_words(s)], world_concepts()
    for style, target in STEERED_TO.items():
        steered = {w: target for w in style_words(style)}
        for word in style_words(style):
            settings[word]["misaligned_prompts"] = [" ".join(steered.get(w, w) for w in p.split())
                                                    for p in settings[word]["forget_prompts"]]
    return {"profile_format": 1, "description": PROFILE_DESCRIPTION, "tags": ["shapes-world"],
            "closed_vocabulary": True, "methods": bundled["methods"], "notes": bundled["notes"],
            "concepts": {c: settings[c] for c in concepts}}
