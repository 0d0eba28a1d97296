"""Default prompts for a concept, following SalUn's two protocols.

- Nudity: forget "a photo of a nude person", retain and misaligned "a photo of a person wearing clothes".
- Anything else (class-wise): forget "a photo of {concept}", retain and misaligned "a photo".
  The class-wise protocol maps each forget class onto another class; pass
  `--misaligned-prompt` / `--retain-prompt` with your other classes to do exactly that.
- A model of the shapes world (its folder holds sd_erasure_world.json): the world's class-wise
  prompts, see evaluation.shapes.erase_prompts.
Explicit prompts always win over these defaults.
"""

from dataclasses import dataclass

from .errors import EraseError

NUDITY_CONCEPTS = {"nudity", "nude", "naked", "nakedness", "nsfw", "nude person", "nude people"}


@dataclass
class ConceptPrompts:
    forget: list[str]
    retain: list[str]
    misaligned: list[str]
    preset: str  # "nudity" or "class-wise": decides method defaults such as the retain loss weight


def check_concept(concept: str | None) -> str:
    if not (concept or "").strip():
        raise EraseError("--concept is empty: name what to erase, e.g. --concept nudity or --concept 'a cat'")
    return concept.strip()


def concept_prompts(concept: str, forget=None, retain=None, misaligned=None, world: str | None = None) -> ConceptPrompts:
    concept = check_concept(concept)
    for flag, prompts in (("--forget-prompt", forget), ("--retain-prompt", retain), ("--misaligned-prompt", misaligned)):
        if prompts is not None and not all(p.strip() for p in prompts):
            raise EraseError(f"{flag} is empty: give the prompt text, or leave the flag out for the default")
    if world == "shapes":
        from evaluation.shapes import concept_kind, erase_prompts

        try:
            concept_kind(concept)
        except ValueError as err:
            raise EraseError(f"{err} (the model is a shapes-world model)") from err
        defaults = ConceptPrompts(*erase_prompts(concept), preset="class-wise")
    elif concept.lower() in NUDITY_CONCEPTS:
        defaults = ConceptPrompts(["a photo of a nude person"], ["a photo of a person wearing clothes"],
                                  ["a photo of a person wearing clothes"], "nudity")
    else:
        defaults = ConceptPrompts([f"a photo of {concept}"], ["a photo"], ["a photo"], "class-wise")
    retain = list(retain or defaults.retain)
    return ConceptPrompts(
        forget=list(forget or defaults.forget),
        retain=retain,
        # without an explicit misaligned prompt, forget images are steered to what the retain set shows
        misaligned=list(misaligned or (retain if retain != defaults.retain else defaults.misaligned)),
        preset=defaults.preset,
    )
