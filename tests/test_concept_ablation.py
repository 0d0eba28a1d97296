"""CA (concept ablation) behind the one interface: which weights change, the prior-preservation branch, bad input."""

import pytest

from conftest import erase_cli
from test_methods import assert_stock_output, changed_tensors

CA_FAST = ["--num-images", "8", "--synthesis-steps", "2", "--steps", "3", "--batch-size", "4", "--learning-rate", "1e-3"]


@pytest.mark.parametrize("train_method", ["xattn-kv", "full"])
def test_ca_trains_exactly_its_parameter_set(tiny_sd, tmp_path, train_method):
    out = tmp_path / f"ca-{train_method}"
    extra = ["--prior-preservation"] if train_method == "full" else []
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "ca",
                     "--train-method", train_method, *extra, *CA_FAST) == 0
    record = assert_stock_output(out)
    changed = changed_tensors(tiny_sd, out)
    key_value = {k for k in changed if "attn2.to_k" in k or "attn2.to_v" in k}
    assert key_value, changed
    if train_method == "xattn-kv":  # the official cross-attn group: nothing else moves, bit for bit
        assert changed == key_value
        assert set(record["final_losses"]) == {"loss", "ablation_loss"}
    else:
        assert changed - key_value and "prior_loss" in record["final_losses"]
    assert not changed_tensors(tiny_sd, out, "text_encoder", "model.safetensors")
    assert record["prompts"] == {"forget": ["a photo of a cat"], "anchor": ["a photo"]}
    assert record["hyperparameters"]["train_method"] == train_method and record["steps"] == 3


def test_ca_learning_rate_follows_the_official_scaling():
    from sd_erasure.erasure.concept_ablation import ConceptAblationConfig

    plain, _ = ConceptAblationConfig(model="m", concept="a cat").with_defaults({})
    prior, sources = ConceptAblationConfig(model="m", concept="a cat", prior_preservation=True).with_defaults({})
    assert plain.learning_rate == pytest.approx(1.6e-5) and prior.learning_rate == pytest.approx(3.2e-5)
    assert sources["learning_rate"] == "official default"
    given, _ = ConceptAblationConfig(model="m", concept="a cat", prior_preservation=True,
                                     learning_rate=1e-4).with_defaults({})
    assert given.learning_rate == 1e-4


@pytest.mark.parametrize("args, message", [
    (["--train-method", "x"], "--train-method 'x' is not one of xattn-kv, full"),
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1.0"),
    (["--misaligned-prompt", " "], "--misaligned-prompt has an empty prompt"),
])
def test_ca_bad_options_get_one_line_and_no_output(tiny_sd, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "ca", *args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
