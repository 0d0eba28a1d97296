"""Default prompts for a concept, following SalUn's two protocols.

- Nudity: forget "a photo of a nude person", retain and misaligned "a photo of a person wearing clothes".
- Anything else (class-wise): forget "a photo of {concept}", retain and misaligned "a photo".
  The class-wise protocol maps each forget class onto another class; pass
  `--misaligned-prompt` / `--retain-prompt` with your other classes to do exactly that.
A model profile (erasure/profile.py) may give a concept's prompts instead, and the user's
prompts always win over both.
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
