"""Several concepts in one erase (`--concept A --concept B`, `--concepts-file`).

Each concept first gets the settings a one-concept erase of it would get (the user's options, the
model profile's entry for it, the method's official defaults). Then:

- joint, the default for a method that declares `ERASED_FIELDS`: one run whose erased lists (SalUn's
  forget prompts, UCE's erase concepts, ESD's forget prompts, SEOT's suppressed words) hold every
  concept's, one concept after another. A list paired with one (SalUn's misaligned prompts, UCE's
  guides) follows it item by item, every other list (retain prompts, preserved concepts) is the
  union, and a single-valued setting (a learning rate) must be the same for all concepts: where the
  profile gives them different ones, the run stops and says so. The run has one run's budget (images,
  steps): multiplying them by the number of concepts was measured and not kept (README, "The
  concept matrix").
- sequential (`sequential`, and every method without erased lists): the method runs once per
  concept, each on the last one's result, as erasing A and then B by hand would.

What a concept keeps or is steered to must not be what another concept erases: a kept prompt (a
retain prompt, a preserved concept) that another concept erases is dropped, and a paired target (a
misaligned prompt, a guide) that another concept erases is replaced by the nearest of the
concept's own kept prompts (most words in common, then the closest in length, then the first).
The self-check clears its prompts the same way and runs per concept (erasure/self_check.py).

This module imports no torch: the CLI reads a concepts file before anything heavy loads.
"""

import os
from dataclasses import fields, replace

from .errors import EraseError, shorten


def read_concepts_file(path: str) -> list[str]:
    """The concepts of a text file, one per line; blank lines and lines starting with # are skipped."""
    if not os.path.isfile(path):
        raise EraseError(f"concepts file {path} does not exist: give a text file with one concept per line")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise EraseError(f"concepts file {path} is not readable UTF-8 text ({err}): save it as UTF-8, "
                         "one concept per line") from err
    concepts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not concepts:
        raise EraseError(f"concepts file {path} lists no concept: write one concept per line")
    return concepts


def nearest(prompt: str, candidates: list[str]) -> str | None:
    """The candidate sharing the most words with `prompt`, then the closest to it in length (so
    "a red square" becomes "a red triangle" rather than "a red"), then the first."""
    words = prompt.lower().split()

    def similarity(candidate: str) -> tuple[int, int]:
        other = candidate.lower().split()
        return len(set(words) & set(other)), -abs(len(other) - len(words))

    return max(candidates, key=similarity, default=None)


def clear_of(targets: list[str], kept: list[str], erased: set[str], what: str, concept: str) -> list[str]:
    """`targets` with each item another concept erases replaced by the nearest of `kept`."""
    if not erased.intersection(targets):
        return targets
    if not kept:
        raise EraseError(f"the `{what}` of {shorten(concept)} are erased with the other concepts, and it keeps "
                         f"nothing to steer to instead: give `{what}` outside the concepts you erase")
    return [nearest(t, kept) if t in erased else t for t in targets]


def erased_items(config) -> list[str]:
    return [item for name in config.ERASED_FIELDS for item in getattr(config, name)]


def kept_apart(config, erased: set[str]):
    """`config` (one concept's) with its kept lists and paired targets cleared of `erased`, what the
    other concepts erase."""
    changes = {}
    for name in config.KEPT_FIELDS:
        values = getattr(config, name)
        changes[name] = [v for v in values if v not in erased]
        if values and not changes[name]:
            raise EraseError(f"every one of the `{name}` of {shorten(config.concept)} is erased with the other "
                             f"concepts: give `{name}` outside the concepts you erase")
    for name, (_, pool) in config.PAIRED_FIELDS.items():
        kept = changes.get(pool, [v for v in getattr(config, pool) if v not in erased])
        changes[name] = clear_of(getattr(config, name), kept, erased, name, config.concept)
    return replace(config, **changes)


def per_concept_apart(configs: list) -> list:
    """Each concept's config cleared of what the others erase."""
    items = [set(erased_items(c)) for c in configs]
    return [kept_apart(c, set().union(*(items[:k] + items[k + 1:]))) for k, c in enumerate(configs)]


def joint_config(configs: list, sources: list[dict]) -> tuple:
    """One config erasing every concept of `configs` (each one concept's, cleared apart), and where
    each value came from ("per concept" where the concepts' differ)."""
    first = configs[0]
    values, merged_sources = {"concept": [c.concept for c in configs]}, dict(sources[0])

    def same(name):
        return all(getattr(c, name) == getattr(first, name) for c in configs)

    for f in fields(first):
        per = [getattr(c, f.name) for c in configs]
        partner = first.PAIRED_FIELDS.get(f.name, (None,))[0]
        if f.name == "concept" or (same(f.name) and (partner is None or same(partner))):
            continue
        merged_sources[f.name] = "per concept"
        if f.name in first.ERASED_FIELDS:
            values[f.name] = [item for v in per for item in v]
        elif partner:  # expanded to its partner's length, so that pairs stay pairs
            values[f.name] = [v[i % len(v)] for c, v in zip(configs, per) for i in range(len(getattr(c, partner)))]
        elif isinstance(per[0], list):
            values[f.name] = list(dict.fromkeys(item for v in per for item in v))
        else:
            differing = "; ".join(f"{shorten(c.concept, 30)}: {v}" for c, v in zip(configs, per))
            raise EraseError(f"the concepts take different `{f.name}` ({differing}): pass `{f.name}` for all of "
                             "them, or add `sequential` to erase them one after another")
    return replace(first, **values), merged_sources
