"""A model profile: settings that a model folder recommends for erasing from it.

Any diffusers model folder may carry `sd_erasure_profile.json` beside model_index.json (the
bundled shapes model does; an erase output keeps its base's). Format (every key optional):

    {
      "profile_format": 1,
      "description": "what the model is",
      "tags": ["shapes-world"],                       # added to the Hub card's tags
      "closed_vocabulary": true,                      # refuse concepts that `concepts` does not list
      "methods": {"<method>": {"<field>": value}},     # per registered method, its config's fields
      "concepts": {"<concept>": {"<field>": value}}    # per concept, fields of any method that has them
    }

A value fills a config field the user left unset (None or empty), so a profile can set exactly
the fields whose default reads "the model profile's, else ..." and the prompt lists. A
concept's fields win over the method's; the user's values win over both. erasure.json records
for every field whether it came from the user, the profile or the official default.
"""

import json
import os
from dataclasses import dataclass, fields

from .config import is_unset
from .errors import EraseError, shorten

PROFILE_FILE = "sd_erasure_profile.json"
FORMAT = 1


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

    def settings(self, config_class, method: str, concept: str) -> dict:
        """What the profile sets for `method` (a registered name, its config `config_class`) and `concept`."""
        self.check_concept(concept)
        settable = {f.name for f in fields(config_class)
                    if f.default is None or f.default_factory is list}
        method_settings = self.data.get("methods", {}).get(method, {})
        unknown = sorted(set(method_settings) - settable)
        if unknown:
            raise EraseError(f"model profile {self.path} sets {', '.join(unknown)} for {method}, which its config "
                             f"cannot take from a profile: remove them (settable: {', '.join(sorted(settable))})")
        concept_settings = {k: v for k, v in self.concepts.get(concept.strip(), {}).items() if k in settable}
        return {k: v for k, v in {**method_settings, **concept_settings}.items() if not is_unset(v)}
