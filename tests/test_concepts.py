"""Several concepts in one erase: joint runs, sequential runs, per-concept self-checks, bad lists."""

import json
from dataclasses import replace

import pytest
import torch

from conftest import FAST, erase_cli, unet_weights


def test_joint_settings_keep_pairs_drop_what_another_concept_erases_and_refuse_conflicts():
    from sd_erasure.erasure.concepts import joint_config, per_concept_apart
    from sd_erasure.erasure.errors import EraseError
    from sd_erasure.erasure.salun import SalUnConfig

    def one(concept, forget, misaligned, retain, rate=1e-4):
        return SalUnConfig(model="m", concept=concept, forget_prompts=forget, misaligned_prompts=misaligned,
                           retain_prompts=retain, learning_rate=rate)

    circle = one("circle", ["a red circle", "a blue circle"], ["a red square"], ["a red square", "a red star"])
    square = one("square", ["a red square"], ["a red circle", "a red star"], ["a red circle", "a red star", "a sky"])
    apart = per_concept_apart([circle, square])
    # what the other concept erases is neither kept nor steered to: the nearest kept prompt replaces it
    assert apart[0].retain_prompts == ["a red star"] and apart[0].misaligned_prompts == ["a red star"]
    assert apart[1].retain_prompts == ["a red star", "a sky"] and apart[1].misaligned_prompts == ["a red star"] * 2
    joint, sources = joint_config(apart, [{}, {}])
    assert joint.concept == ["circle", "square"]
    assert joint.forget_prompts == ["a red circle", "a blue circle", "a red square"]
    assert joint.misaligned_prompts == ["a red star"] * 3  # expanded to stay paired with the forget prompts
    assert joint.retain_prompts == ["a red star", "a sky"] and sources["forget_prompts"] == "per concept"

    with pytest.raises(EraseError, match="different learning_rate .*add sequential"):
        joint_config(per_concept_apart([circle, one("star", ["a red star"], ["a sky"], ["a sky"], rate=1e-3)]),
                     [{}, {}])


def test_uce_erases_a_concept_list_in_one_solve_equal_to_the_closed_form_for_the_list(tiny_sd, tmp_path):
    joint, listed = tmp_path / "joint", tmp_path / "listed"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--concept", "a dog", "--output", joint,
                     "--method", "uce") in (0, 3)
    # the same closed form, asked for directly: one concept whose erase list holds both
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--erase-concept", "a cat", "--erase-concept", "a dog",
                     "--output", listed, "--method", "uce") in (0, 3)
    record = json.loads((joint / "erasure.json").read_text())
    assert record["concept"] == ["a cat", "a dog"] and record["prompts"]["erase"] == ["a cat", "a dog"]
    assert record["prompts"]["guide"] == ["", ""]
    assert set(record["self_check"]["per_concept"]) == {"a cat", "a dog"}
    joint_weights, listed_weights, base = unet_weights(joint), unet_weights(listed), unet_weights(tiny_sd)
    assert all(torch.equal(joint_weights[k], listed_weights[k]) for k in base)
    edited = {k for k in base if not torch.equal(joint_weights[k], base[k])}
    assert edited and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in edited)
    from sd_erasure.erasure.hub import build_model_card

    card = build_model_card(str(joint), "alice/tiny-no-pets", license="mit")
    assert card.data.erased_concepts == ["a cat", "a dog"] and "**a cat, a dog** erased" in card.text


def test_sequential_erases_one_concept_after_another_and_records_each(tiny_sd, tmp_path):
    out = tmp_path / "sequential"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--concept", "a dog", "--output", out,
                     "--method", "uce", "--sequential") in (0, 3)
    record = json.loads((out / "erasure.json").read_text())
    assert [r["concept"] for r in record["per_concept"]] == ["a cat", "a dog"]
    assert record["prompts"]["erase"] == ["a cat", "a dog"] and record["summary"][0][0].startswith("'a cat': ")
    # two rank-one edits one after another are not the joint solve
    joint = tmp_path / "joint"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--concept", "a dog", "--output", joint,
                     "--method", "uce") in (0, 3)
    sequential_weights, joint_weights = unet_weights(out), unet_weights(joint)
    assert any(not torch.equal(sequential_weights[k], joint_weights[k]) for k in joint_weights)


def test_salun_erases_two_objects_at_once_on_the_shapes_world(tmp_path):
    """Each listed concept's UA rises, the other objects stay (the full rows: README, "Many concepts")."""
    from sd_erasure.evaluation.metrics import Protocol
    from sd_erasure.evaluation.suite import evaluate_shapes

    out = tmp_path / "two"
    erase_cli("--model", "shapes", "--concept", "circle", "--concept", "square", "--output", out,
              "--num-images", "128")
    record = json.loads((out / "erasure.json").read_text())
    forget, misaligned = record["hyperparameters"]["forget_prompts"], record["hyperparameters"]["misaligned_prompts"]
    assert len(forget) == len(misaligned) and not {"circle", "square"} & {w for p in misaligned for w in p.split()}
    metrics = evaluate_shapes(str(out), ["circle", "square"], str(tmp_path / "report"),
                              protocol=Protocol(images_per_prompt=1), show_progress=False)
    base, erased = metrics["base"], metrics["erased"]
    assert all(erased["UA_by_concept"][c] >= base["UA_by_concept"][c] + 0.8 for c in ("circle", "square")), metrics
    assert erased["IRA"] >= base["IRA"] - 0.1 and erased["CRA"] >= base["CRA"] - 0.1, metrics


def test_salun_per_concept_masks_merge_each_concepts_own_mask(tiny_sd, tmp_path):
    """`--concept-masks per-concept`: each concept's forget images rank the weights apart, and an entry
    either concept's top mask_ratio holds may change; the joint mask ranks all images together."""
    from diffusers import StableDiffusionPipeline

    from sd_erasure.erasure.data import LatentSet
    from sd_erasure.erasure.salun import SalUnConfig, compute_saliency, forget_subset
    from sd_erasure.erasure.saliency import load_mask
    from sd_erasure.erasure.training import make_accelerator

    pipe, accelerator = StableDiffusionPipeline.from_pretrained(str(tiny_sd)), make_accelerator()
    prompts = {"cat": ["a photo of a cat"], "dog": ["a photo of a dog", "a dog running"]}
    configs = {c: SalUnConfig(model="m", concept=c, forget_prompts=p).with_defaults({})[0] for c, p in prompts.items()}
    joint = replace(configs["cat"], concept=["cat", "dog"], forget_prompts=prompts["cat"] + prompts["dog"])
    captions = [p for _ in range(3) for p in joint.forget_prompts]
    forget = LatentSet(torch.randn(len(captions), 4, 8, 8, generator=torch.Generator().manual_seed(0)), captions)
    own = {c: compute_saliency(pipe, forget_subset(forget, prompts[c]), joint, accelerator, False) for c in prompts}
    together = compute_saliency(pipe, forget, joint, accelerator, False, list(configs.values()))
    merged = compute_saliency(pipe, forget, replace(joint, concept_masks="per-concept"), accelerator, False,
                              list(configs.values()))
    assert all(torch.equal(merged[n], own["cat"][n] | own["dog"][n]) for n in merged)
    count = lambda mask: sum(int(m.sum()) for m in mask.values())  # noqa: E731
    assert count(together) == count(own["cat"]) < count(merged) and any(
        not torch.equal(together[n], merged[n]) for n in merged)

    # through the CLI: recorded, and nothing outside the merged mask moved
    out = tmp_path / "per-concept"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--concept", "a dog", "--output", out, *FAST,
                     "--concept-masks", "per-concept") in (0, 3)
    record, mask = json.loads((out / "erasure.json").read_text()), load_mask(out / "saliency_mask.safetensors")
    assert record["mask"]["concepts"] == "per-concept" and record["mask"]["density"] > 0.5
    base, new = unet_weights(tiny_sd), unet_weights(out)
    assert all(torch.equal(base[n].flatten()[~mask[n].flatten()], new[n].flatten()[~mask[n].flatten()]) for n in base)


@pytest.mark.parametrize("lines, message", [
    (None, "does not exist"),
    ("# nothing here\n\n", "lists no concept"),
    ("circle\nsquare\ncircle\n", "'circle' is listed twice"),
])
def test_bad_concepts_file_gets_one_line_and_no_output(tmp_path, capsys, lines, message):
    listing = tmp_path / "concepts.txt"
    if lines is not None:
        listing.write_text(lines)
    out = tmp_path / "out"
    assert erase_cli("--model", "shapes", "--concepts-file", listing, "--output", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_evaluating_objects_and_colours_together_is_refused_in_one_line(tmp_path, capsys):
    from sd_erasure.erasure.cli import main

    assert main(["evaluate", "--suite", "shapes", "--model", "shapes", "--concept", "circle", "--concept", "red",
                 "--output", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mix objects and colours" in err[0], err


def test_matrix_row_and_multi_concept_score_judge_each_concept_on_its_own_prompts(tmp_path):
    """The concept matrix's row and UA per concept, on judged labels made up here (no model)."""
    from benchmarks.concept_matrix import WORLD, accuracy_row, heat_map
    from sd_erasure.evaluation.metrics import score
    from sd_erasure.evaluation.shapes import prompts

    prompt_list = prompts()
    # circle and square erased: circles are drawn as crosses, squares stay squares; red star prompts go wrong
    objects = ["cross" if p.object == "circle" else p.object for p in prompt_list]
    styles = ["green" if (p.style, p.object) == ("red", "star") else p.style for p in prompt_list]
    row = accuracy_row(prompt_list, 1, objects, styles, ["circle", "square"])
    assert row["circle"] == 0.0 and row["square"] == 1.0 and row["cross"] == 1.0
    assert row["red"] == 2 / 3  # red prompts naming neither erased object: triangle, cross and star
    result = score(prompt_list, 1, objects, styles, ["circle", "square"])
    assert result["UA_by_concept"] == {"circle": 1.0, "square": 0.0} and result["UA"] == 0.5
    assert result["IRA"] == 1.0 and result["CRA"] == 1 - 3 / 27  # 3 objects × 9 style words remain
    heat_map(str(tmp_path / "map.png"), "test", {"circle": row})
    assert (tmp_path / "map.png").stat().st_size > 0 and len(row) == len(WORLD)


def test_rerunning_one_method_of_the_matrix_keeps_the_other_methods_rows(tmp_path):
    from benchmarks.concept_matrix import kept_rows

    earlier = {"date": "2026-11-28", "rows": [
        {"benchmark": "concept-matrix", "method": "uce", "UA": 0.98},
        {"benchmark": "concept-matrix", "method": "salun", "UA": 0.90},
        {"benchmark": "concept-matrix-group", "method": "salun", "cell": "red+green", "IRA": 1.0}]}
    (tmp_path / "summary.json").write_text(json.dumps(earlier))
    new = [{"benchmark": "concept-matrix", "method": "salun", "UA": 0.99, "date": "2026-11-29"}]
    kept = kept_rows(str(tmp_path / "summary.json"), new)
    assert kept == [{"benchmark": "concept-matrix", "method": "uce", "UA": 0.98, "date": "2026-11-28"},
                    {"benchmark": "concept-matrix-group", "method": "salun", "cell": "red+green", "IRA": 1.0,
                     "date": "2026-11-28"}]
    assert kept_rows(str(tmp_path / "missing.json"), new) == []
