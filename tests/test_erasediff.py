"""EraseDiff behind the one interface: it trains only its scope, the official run scripts' defaults
by protocol, bad input."""

from conftest import erase_cli
from test_methods import assert_stock_output, changed_tensors

FAST = ["--num-images", "8", "--synthesis-steps", "2", "--steps", "3", "--batch-size", "4"]


def test_erasediff_trains_only_its_scope_and_keeps_the_text_encoder(tiny_sd, tmp_path):
    out = tmp_path / "erasediff"
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, "--method", "erasediff",
                     "--learning-rate", "1e-3", *FAST) in (0, 3)
    record = assert_stock_output(out)
    changed = changed_tensors(tiny_sd, out)
    assert changed and not any("attn2" in n for n in changed)  # nudity: noxattn, cross-attention bit-identical
    assert not changed_tensors(tiny_sd, out, "text_encoder", "model.safetensors")
    assert record["hyperparameters"]["scope"] == "noxattn" and record["settings_source"]["scope"] == "official default"
    assert record["final_losses"]["forget_loss"] > 0
    assert record["prompts"]["misaligned"] == ["a photo of a person wearing clothes"]


def test_erasediff_defaults_follow_the_official_run_scripts():
    from sd_erasure.erasure.erasediff import EraseDiffConfig

    nudity, _ = EraseDiffConfig(model="m", concept="nudity").with_defaults({})
    assert (nudity.scope, nudity.steps, nudity.batch_size, nudity.learning_rate) == ("noxattn", 160, 16, 1e-5)
    assert nudity.unlearning_objective() == (1.0, 1.0, "misaligned")
    objects, _ = EraseDiffConfig(model="m", concept="a cat", forget_loss_weight=0.1).with_defaults({})
    assert (objects.scope, objects.steps) == ("full", 60)
    assert objects.unlearning_objective() == (0.1, 1.0, "misaligned")
    assert objects.narrower().scope == "xattn" and objects.narrower().misaligned_target == "base"


def test_erasediff_negative_weight_is_refused_in_one_line(tiny_sd, tmp_path, capsys):
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "erasediff",
                     "--forget-loss-weight", "-1") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and "forget-loss-weight" in err[0] and "0 or more" in err[0], err
    assert not out.exists()
