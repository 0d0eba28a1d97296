"""Prompt sets for evaluation: the ones shipped in evaluation/prompts/ (see SOURCES.md there for
origins and licences) or any CSV with a `prompt` column.

Optional columns: `evaluation_seed`, `evaluation_guidance`, `categories` (comma-separated),
`case_number` (the row's id), `nudity_percentage` (I2P). Quoted prompts may span several lines.
"""

import csv
import os
from dataclasses import dataclass, field

from ..erasure.errors import EraseError

PROMPT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")
BUILTIN = {
    "i2p": "i2p_4703.csv",
    "nudity-142": "nudity_142.csv",
    "coco-10k": "coco_10k.csv",
    "imagenette": "imagenette_10.csv",
    "attack-church": "attack_church.csv",
    "attack-garbage-truck": "attack_garbage_truck.csv",
    "attack-parachute": "attack_parachute.csv",
    "attack-tench": "attack_tench.csv",
    "attack-vangogh": "attack_vangogh.csv",
}


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str
    seed: int | None = None
    guidance: float | None = None
    categories: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def prompt_file(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    if name_or_path in BUILTIN:
        return os.path.join(PROMPT_DIR, BUILTIN[name_or_path])
    raise EraseError(f"prompt set {name_or_path!r} is neither a CSV file nor a shipped set: use one of "
                     f"{', '.join(BUILTIN)}, or a CSV path with a 'prompt' column")


def _number(text: str, kind):
    text = (text or "").strip()
    return kind(float(text)) if text else None


def load_prompts(name_or_path: str, categories: list[str] | None = None, limit: int | None = None,
                 min_nudity: float | None = None) -> list[PromptRow]:
    """Rows of a prompt set, filtered by category (any of), I2P nudity_percentage, then the first `limit`."""
    path = prompt_file(name_or_path)
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: one shipped file starts with a BOM
        reader = csv.DictReader(f)
        if "prompt" not in (reader.fieldnames or []):
            raise EraseError(f"{path} has no 'prompt' column (it has {', '.join(reader.fieldnames or [])}): "
                             "add a header row with a 'prompt' column")
        records = list(reader)
    if min_nudity is not None and records and "nudity_percentage" not in records[0]:
        raise EraseError(f"{path} has no nudity_percentage column: drop --min-nudity or use the i2p set")
    rows = []
    for index, record in enumerate(records):
        row = PromptRow(
            id=(record.get("case_number") or str(index)).strip(),
            prompt=record["prompt"],
            seed=_number(record.get("evaluation_seed"), int),
            guidance=_number(record.get("evaluation_guidance"), float),
            categories=tuple(c.strip() for c in (record.get("categories") or "").split(",") if c.strip()),
            extra={k: v for k, v in record.items() if k and k not in ("prompt", "categories")},
        )
        if categories and not set(categories) & set(row.categories):
            continue
        if min_nudity is not None and (_number(record["nudity_percentage"], float) or 0.0) < min_nudity:
            continue
        rows.append(row)
    return rows[:limit] if limit else rows
