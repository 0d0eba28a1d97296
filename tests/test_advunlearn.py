"""AdvUnlearn: only the text encoder changes, the output loads as AdvUnlearn publishes it, an
interrupted run resumes exactly (the last attack's tokens included), and on the shapes world the
profiled erase removes circle and keeps the rest."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import erase_cli
from sd_erasure import erase, methods
from sd_erasure.erasure.advunlearn import trains
from sd_erasure.erasure.folders import resolve_model

FAST = dict(steps=4, warmup_steps=1, attack_steps=2, attack_tokens=2, num_images=4, synthesis_steps=4,
            synthesis_batch_size=2, retain_batch_size=2, learning_rate=1e-3)


def text_encoder_weights(folder):
    return load_file(os.path.join(folder, "text_encoder", "model.safetensors"))


def test_trained_layers_by_name_with_and_without_the_transformers_4_prefix():
    for prefix in ("", "text_model."):
        assert trains(prefix + "encoder.layers.1.mlp.fc1.weight", "all")
        assert trains(prefix + "final_layer_norm.weight", "all")
        assert not trains(prefix + "embeddings.token_embedding.weight", "all")
        assert trains(prefix + "encoder.layers.0.self_attn.q_proj.weight", "first")
        assert not trains(prefix + "encoder.layers.1.self_attn.q_proj.weight", "first")
        assert not trains(prefix + "final_layer_norm.weight", "first")
        # SDXL's first encoder is read at its penultimate layer (here layer 1 of 3): nothing after it trains
        assert trains(prefix + "encoder.layers.1.mlp.fc1.weight", "all", layers_read=2)
        assert not trains(prefix + "encoder.layers.2.mlp.fc1.weight", "all", layers_read=2)
        assert not trains(prefix + "final_layer_norm.weight", "all", layers_read=2)


def test_only_the_text_encoder_changes_and_an_interrupted_run_resumes_exactly(tiny_sd, tmp_path):
    from diffusers import DiffusionPipeline
    from transformers import CLIPTextModel

    config = methods()["advunlearn"].config
    settings = dict(model=str(tiny_sd), concept="a cat", attack_init="latest", checkpointing_steps=2, **FAST)
    whole = tmp_path / "whole"
    result = erase(config(output_dir=str(whole), **settings), show_progress=False)

    interrupted = tmp_path / "interrupted"

    def stop_at_step_3(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        erase(config(output_dir=str(interrupted), **settings), step_callback=stop_at_step_3, show_progress=False)
    erase(config(output_dir=str(interrupted), resume_from_checkpoint="latest", **settings), show_progress=False)

    base, a, b = (text_encoder_weights(f) for f in (tiny_sd, whole, interrupted))
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed == uninterrupted: steps 3-4 attack from the saved tokens
    changed = {k for k in base if not torch.equal(base[k], a[k])}
    assert changed and all(trains(k, "all") for k in changed)
    assert not any("embeddings" in k for k in changed)  # the vocabulary itself is never trained
    record = json.loads((whole / "erasure.json").read_text())
    assert record["changed"]["unet"]["entries"] == 0 and record["changed"]["vae"]["entries"] == 0
    assert record["changed"]["text_encoder"]["entries"] > 0
    assert record["trained_parameters"]["components"] == ["text_encoder"]
    # official defaults where nothing else is given: the concept as the prompt, COCO objects as retain set
    assert record["prompts"]["forget"] == ["a cat"] and record["retain_prompt_count"] == 79
    assert not any("cat" in p for p in record["prompts"]["retain"]) and record["hyperparameters"]["retain_loss_weight"] == 0.5
    assert len(record["last_attack_tokens"][0]) == 2 and "retain_drift" in result.record["self_check"]
    # a stock pipeline, and its text encoder alone as AdvUnlearn publishes its models
    assert type(DiffusionPipeline.from_pretrained(str(whole))).__name__ == "StableDiffusionPipeline"
    loaded = {n.removeprefix("text_model."): p for n, p in
              CLIPTextModel.from_pretrained(str(whole), subfolder="text_encoder").state_dict().items()}
    assert all(torch.equal(loaded[k.removeprefix("text_model.")], v) for k, v in a.items())


def test_a_forget_prompt_leaving_no_room_for_the_attack_tokens_is_refused(tiny_sd, tmp_path, capsys):
    out = tmp_path / "out"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "advunlearn",
                     "--forget-prompt", "cat " * 74, "--attack-tokens", "3") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-erase")]
    assert len(err) == 1 and "leaves no room for 3 attack tokens" in err[0], err
    assert not out.exists() and not (tmp_path / "out.incomplete").exists()


def test_advunlearn_erases_circle_on_the_shapes_world_and_keeps_the_rest(tmp_path):
    """The shapes profile's settings, shortened (the full run and its attack: README, AdvUnlearn row)."""
    from sd_erasure.evaluation.metrics import Protocol
    from sd_erasure.evaluation.suite import evaluate_shapes

    out = tmp_path / "adv"
    assert erase_cli("--model", "shapes", "--concept", "circle", "--output", out, "--method", "advunlearn",
                     "--steps", "120", "--warmup-steps", "60", "--attack-steps", "10") == 0
    metrics = evaluate_shapes(str(out), "circle", str(tmp_path / "report"), protocol=Protocol(images_per_prompt=2),
                              show_progress=False)
    assert metrics["erased"]["UA"] >= 0.9 and metrics["erased"]["IRA"] >= 0.9 and metrics["erased"]["CRA"] >= 0.9, metrics
    unet = "unet/diffusion_pytorch_model.safetensors"
    base, erased = load_file(os.path.join(resolve_model("shapes").path, unet)), load_file(out / unet)
    assert all(torch.equal(base[k], erased[k]) for k in base)


def test_card_says_the_text_encoder_changed_and_refuses_metrics_of_another_command(tiny_sd, tmp_path):
    from sd_erasure.erasure.errors import EraseError
    from sd_erasure.erasure.hub import build_model_card

    out = tmp_path / "out"
    erase(methods()["advunlearn"].config(model=str(tiny_sd), concept="a cat", output_dir=str(out), **FAST),
          show_progress=False)
    card = build_model_card(str(out), "alice/tiny-no-cat", license="mit")
    assert "Only the text encoder changed" in card.text and "The text encoder is unchanged" not in card.text
    assert "robustness to such attacks has not been measured" in card.text and "advunlearn" in card.data.tags
    evaluate_metrics = tmp_path / "metrics.json"
    evaluate_metrics.write_text(json.dumps({"suite": "shapes", "erased": {}}))
    with pytest.raises(EraseError, match="has no 'asr': give the metrics.json that `sd-erase attack` wrote"):
        build_model_card(str(out), "alice/tiny-no-cat", license="mit", attack_metrics_file=str(evaluate_metrics))
