"""A model profile: settings that a model folder recommends for erasing from it.

Any diffusers model folder may carry `sd_erasure_profile.json` beside model_index.json (the
bundled shapes model does; an erase output keeps its base's). Format (every key optional):

    {
      "profile_format": 1,
      "description": "what the model is",
      "tags": ["shapes-world"],                       # added to the Hub card's tags
      "closed_vocabulary": true,                      # refuse concepts that `concepts` does not list
      "methods": {"<method>": {"<field>": value,       # per registered method, its config's fields;
                               "adapter_lora": {"<field>": value}}},  # over those when it trains a LoRA
      "concepts": {"<concept>": {"<field>": value}}    # per concept, fields of any method that has them
    }

A value fills a config field the user left unset (None or empty), so a profile can set exactly
the fields whose default reads "the model profile's, else ..." and the prompt lists. A
concept's fields win over the method's; the user's values win over both. erasure.json records
for every field whether it came from the user, the profile or the official default.
"""

import itertools
import json
import os
import string
from dataclasses import dataclass, fields

from .config import is_unset
from .errors import EraseError, shorten

PROFILE_FILE = "sd_erasure_profile.json"
FORMAT = 1
ADAPTER_LORA = "adapter_lora"  # a method's settings for `adapter` lora


@dataclass
class ModelProfile:
    path: str
    data: dict

    @classmethod
    def load(cls, folder: str) -> "ModelProfile | None":
        """The profile in `folder`, or None where it has none."""
        path = os.path.join(folder, PROFILE_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise EraseError(f"model profile {path} is not readable JSON ({err}): fix or remove it") from err
        if not isinstance(data, dict) or data.get("profile_format", FORMAT) != FORMAT:
            raise EraseError(f"model profile {path} is not a profile of format {FORMAT}: see the README's "
                             "'Model profiles' section")
        return cls(path, data)

    @property
    def tags(self) -> list[str]:
        return list(self.data.get("tags", []))

    @property
    def concepts(self) -> dict[str, dict]:
        return self.data.get("concepts", {})

    def check_concept(self, concept: str) -> None:
        if self.data.get("closed_vocabulary") and concept.strip() not in self.concepts:
            raise EraseError(f"`concept` {shorten(concept)} is not a concept of this model: its profile "
                             f"({os.path.basename(self.path)}) lists {', '.join(self.concepts)}")

    def settings(self, config_class, method: str, concept: str, lora: bool = False) -> dict:
        """What the profile sets for `method` (a registered name, its config `config_class`) and `concept`;
        with `lora` (the method trains a LoRA in place of its weights), the method's `adapter_lora`
        settings over its own: a LoRA starts at zero and moves few parameters, so it wants its own rate."""
        self.check_concept(concept)
        settable = {f.name for f in fields(config_class)
                    if f.default is None or f.default_factory is list}
        method_settings = dict(self.data.get("methods", {}).get(method, {}))
        lora_settings = method_settings.pop(ADAPTER_LORA, {})
        unknown = sorted((set(method_settings) | set(lora_settings)) - settable)
        if unknown:
            raise EraseError(f"model profile {self.path} sets {', '.join(unknown)} for {method}, which its config "
                             f"cannot take from a profile: remove them (settable: {', '.join(sorted(settable))})")
        if lora:
            method_settings.update(lora_settings)
        concept_settings = {k: v for k, v in self.concepts.get(concept.strip(), {}).items() if k in settable}
        return {k: v for k, v in {**method_settings, **concept_settings}.items() if not is_unset(v)}


def caption_concepts(template: str, slots: dict[str, list[list[str]]]) -> dict[str, dict]:
    """Every concept's prompts for a model captioned in a closed language: one `template` with named
    slots ("a {colour} {shape}") and each slot's concepts, a concept being its words (["red",
    "crimson", "scarlet"]: a name, then synonyms). Keyed by every word, synonyms included; each
    erases its whole concept.

    SalUn's class-wise protocol on the captions: forget every caption holding the concept; misaligned,
    the same caption with the slot's next concept (circle -> square, so an erased shape keeps its
    colour); retain, every other caption. Captions run through the slots in `slots`' order, the
    first outermost. For closed-form text edits (UCE): the text encoder of such models is causal,
    so the hidden state at a word depends only on the words before it; every caption prefix that
    ends at a slot's word is a concept to erase (holding the concept), else to preserve, and the
    erase prefixes are guided to the same ones with the next concept.
    """
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if sorted(names) != sorted(slots) or len(set(names)) != len(names):
        raise EraseError(f"the caption template {template!r} must name each slot once: {', '.join(slots)}")
    if any(not groups or not all(groups) for groups in slots.values()):
        raise EraseError("every slot needs at least one concept of at least one word")
    group_of = {word: (slot, k) for slot, groups in slots.items() for k, group in enumerate(groups) for word in group}
    if len(group_of) != sum(len(g) for groups in slots.values() for g in groups):
        raise EraseError("a word appears in two concepts: give each word to one concept of one slot")
    fillings = [dict(zip(slots, words)) for words in
                itertools.product(*([w for group in groups for w in group] for groups in slots.values()))]
    captions = [template.format(**filling) for filling in fillings]
    cut = {name: template.index("{" + name + "}") + len(name) + 2 for name in names}
    prefixes = {template[:cut[name]].format(**filling) for filling in fillings for name in names} | set(captions)

    def holds(filling, slot, k):
        return group_of[filling[slot]] == (slot, k)

    def steered(text, slot, k):
        replacement = slots[slot][(k + 1) % len(slots[slot])][0]
        return " ".join(replacement if group_of.get(w) == (slot, k) else w for w in text.split())

    concepts = {}
    for word, (slot, k) in group_of.items():
        forget = [c for c, f in zip(captions, fillings) if holds(f, slot, k)]
        erase = sorted(p for p in prefixes if any(group_of.get(w) == (slot, k) for w in p.split()))
        concepts[word] = {"forget_prompts": forget,
                          "retain_prompts": [c for c, f in zip(captions, fillings) if not holds(f, slot, k)],
                          "misaligned_prompts": [steered(c, slot, k) for c in forget],
                          "erase_concepts": erase, "guide_concepts": [steered(p, slot, k) for p in erase],
                          "preserve_concepts": sorted(prefixes - set(erase))}
    return concepts


def parse_slot(text: str) -> tuple[str, list[list[str]]]:
    """'colour=red/crimson,green,blue' -> ('colour', [['red', 'crimson'], ['green'], ['blue']])."""
    name, _, concepts = text.partition("=")
    groups = [[w.strip() for w in group.split("/") if w.strip()] for group in concepts.split(",")]
    if not name.strip() or not concepts.strip() or not all(groups):
        raise EraseError(f"slot {text!r} is not NAME=WORD,WORD/SYNONYM,...: e.g. colour=red/crimson,green,blue")
    return name.strip(), groups


def write_caption_profile(model_folder: str, template: str, slots: dict[str, list[list[str]]],
                          overwrite: bool = False) -> str:
    """Write MODEL_FOLDER/sd_erasure_profile.json for a model captioned `template` (see
    `caption_concepts`): every erase from that folder then reads its concepts' prompts in the
    model's own words. Returns the file's path."""
    if not os.path.isfile(os.path.join(model_folder, "model_index.json")):
        raise EraseError(f"{model_folder} is not a diffusers model folder (no model_index.json): give the local "
                         "folder of the model the profile is for")
    path = os.path.join(model_folder, PROFILE_FILE)
    if os.path.exists(path) and not overwrite:
        raise EraseError(f"{path} already exists: pass `overwrite` to replace it")
    concepts = caption_concepts(template, slots)
    profile = {"profile_format": FORMAT, "description": f"Captioned {template!r}: a closed caption language.",
               "closed_vocabulary": True, "captions": {"template": template, "slots": slots}, "concepts": concepts}
    with open(path + ".incomplete", "w") as f:
        json.dump(profile, f, indent=1)
    os.replace(path + ".incomplete", path)
    return path
