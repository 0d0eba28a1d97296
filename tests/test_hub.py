"""Publishing: the real huggingface_hub client against a local endpoint (tests/hub_endpoint.py)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import FAST, REPO, erase_cli
from hub_endpoint import HubEndpoint

TOKEN = "hf_testtoken_DoNotLeak_1234567890"


def sd_erase(*args, endpoint=None, token=TOKEN, then=""):
    """The CLI in a fresh process: HF_ENDPOINT is read when huggingface_hub is imported. `then`: Python
    run after the CLI in the same process (its exit code in `code`), e.g. to look at what it imported."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.pop("HF_TOKEN", None)
    env.update(HF_HOME=os.environ["HF_HOME"], PYTHONPATH=REPO)
    if endpoint:
        env["HF_ENDPOINT"] = endpoint.url
    if token:
        env["HF_TOKEN"] = token
    command = ["-m", "sd_erasure.erasure.cli", *map(str, args)] if not then else [
        "-c", f"from sd_erasure.erasure.cli import main\ncode = main({list(map(str, args))!r})\n{then}"]
    return subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def erase_output(tiny_sd, tmp_path_factory):
    out = tmp_path_factory.mktemp("push") / "tiny-no-nudity"
    assert erase_cli("--model", tiny_sd, "--concept", "nudity", "--output", out, *FAST, "--checkpointing-steps", "2") == 0
    # what a run can leave beside the model: logs and a stray checkpoint must not be published
    (out / "logs").mkdir()
    (out / "logs" / "events.out").write_text("x")
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "optimizer.bin").write_text("x")
    return out


@pytest.fixture
def endpoint(tmp_path):
    hub = HubEndpoint(str(tmp_path / "received"))
    yield hub
    hub.close()


def test_push_uploads_a_loadable_pipeline_and_a_valid_card(erase_output, endpoint, tmp_path):
    done = sd_erase("push", erase_output, "--repo-id", "alice/tiny-no-nudity", "--license", "creativeml-openrail-m",
                    endpoint=endpoint)
    assert done.returncode == 0, done.stderr
    assert f"{endpoint.url}/alice/tiny-no-nudity" in done.stdout
    received = tmp_path / "received"
    files = sorted(os.path.relpath(os.path.join(d, f), received) for d, _, fs in os.walk(received) for f in fs)
    assert "README.md" in files and "erasure.json" in files and "saliency_mask.safetensors" in files
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/"))]

    from huggingface_hub import ModelCard

    card = ModelCard.load(received / "README.md")
    assert card.data.license == "creativeml-openrail-m"
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert {"stable-diffusion", "concept-erasure", "machine-unlearning", "salun"} <= set(card.data.tags)
    assert card.data.erased_concepts == ["nudity"]
    assert card.data.base_model is None  # a local base folder is not a Hub id
    assert 'DiffusionPipeline.from_pretrained("alice/tiny-no-nudity")' in card.text
    assert "a photo of a nude person" in card.text and "SalUn" in card.text and "@inproceedings" in card.text

    script = ("from diffusers import DiffusionPipeline\n"
              f"pipe = DiffusionPipeline.from_pretrained({str(received)!r})\n"
              "assert type(pipe).__name__ == 'StableDiffusionPipeline'\n"
              "pipe('a photo', num_inference_steps=2)\n")
    loaded = subprocess.run([sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
                            cwd="/", capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]

    # the token only ever travels in the Authorization header
    assert any(TOKEN in r["headers"].get("authorization", r["headers"].get("Authorization", "")) for r in endpoint.requests)
    assert not any(TOKEN.encode() in r["body"] for r in endpoint.requests)
    assert TOKEN not in done.stdout + done.stderr
    for d, _, fs in os.walk(erase_output):
        for f in fs:
            assert TOKEN.encode() not in open(os.path.join(d, f), "rb").read()


def test_card_carries_evaluation_results_in_model_index(erase_output, endpoint, tmp_path):
    metrics = {"suite": "shapes", "protocol": {"images_per_prompt": 8, "guidance_scale": 4.0},
               "base": {"UA": 0.0, "IRA": 0.99, "CRA": 0.99, "FID": 0.0},
               "erased": {"UA": 1.0, "IRA": 0.98, "CRA": 0.96, "FID": 56.9}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    done = sd_erase("push", erase_output, "--repo-id", "alice/with-metrics", "--license", "apache-2.0",
                    "--metrics", tmp_path / "metrics.json", "--create-pr", endpoint=endpoint)
    assert done.returncode == 0, done.stderr
    assert "/discussions/1" in done.stdout

    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "received" / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"ua": 1.0, "ira": 0.98, "cra": 0.96, "fid": 56.9}
    assert "| UA | 0.000 | 1.000 |" in card.text


def test_interrupted_upload_reports_one_line_and_a_rerun_completes(erase_output, tmp_path):
    hub = HubEndpoint(str(tmp_path / "received"), failing_commits=10)
    try:
        failed = sd_erase("push", erase_output, "--repo-id", "alice/retry", "--license", "mit", endpoint=hub)
        assert failed.returncode == 2
        assert failed.stderr.strip().splitlines()[-1].endswith("run the same command again to finish the push")
        hub.failing_commits = 0
        again = sd_erase("push", erase_output, "--repo-id", "alice/retry", "--license", "mit", endpoint=hub)
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "received" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    finally:
        hub.close()


@pytest.mark.parametrize("args, token, message", [
    (["--repo-id", "alice/x", "--token", TOKEN], TOKEN, "--token is refused"),
    (["--repo-id", "alice/x", "--hub-token", TOKEN], TOKEN, "--hub-token is refused"),
    (["--repo-id", "alice/x", "--license", "mit"], None, "no Hugging Face token"),
    (["--repo-id", "not a repo!!", "--license", "mit"], TOKEN, "malformed"),
    (["--repo-id", "alice/x", "--license", "my-own-licence"], TOKEN, "not one the Hub accepts"),
    (["--repo-id", "alice/x"], TOKEN, "license is unknown"),
    (["--repo-id", "alice/x", "--license", "mit", "--create-pr", "--revision", "dev"], TOKEN, "leave out --revision"),
])
def test_bad_push_input_exits_2_before_any_request(erase_output, endpoint, args, token, message):
    done = sd_erase("push", erase_output, *args, endpoint=endpoint, token=token)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert TOKEN not in done.stderr + done.stdout
    assert endpoint.requests == []


def test_a_bad_license_is_refused_before_torch_is_imported(erase_output, endpoint):
    done = sd_erase("push", erase_output, "--repo-id", "alice/x", "--license", "my-own-licence", endpoint=endpoint,
                    then="import sys; print(code, 'torch' in sys.modules)")
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr


def test_folder_that_is_not_an_erase_output_is_refused(tiny_sd, endpoint):
    done = sd_erase("push", tiny_sd, "--repo-id", "alice/x", "--license", "mit", endpoint=endpoint)
    assert done.returncode == 2 and "not an sd-erase output" in done.stderr
    assert endpoint.requests == []


def test_erase_with_push_to_hub_checks_the_token_first_then_pushes(tiny_sd, endpoint, tmp_path):
    out = tmp_path / "pushed"
    no_token = sd_erase("erase", "--model", tiny_sd, "--concept", "nudity", "--output", out, *FAST,
                        "--push-to-hub", "--hub-model-id", "alice/pushed", endpoint=endpoint, token=None)
    assert no_token.returncode == 2 and "no Hugging Face token" in no_token.stderr
    assert not out.exists()
    done = sd_erase("erase", "--model", tiny_sd, "--concept", "nudity", "--output", out, *FAST,
                    "--push-to-hub", "--hub-model-id", "alice/pushed", "--license", "mit", endpoint=endpoint)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "received" / "model_index.json").is_file()


def test_erase_with_push_to_hub_does_not_publish_what_its_self_check_finds_not_erased(endpoint, tmp_path):
    out = tmp_path / "dry-run"
    done = sd_erase("erase", "--model", "shapes", "--concept", "circle", "--output", out, "--num-images", "64",
                    "--learning-rate", "0", "--steps", "10", "--push-to-hub", "--hub-model-id", "alice/not-erased",
                    "--license", "mit", endpoint=endpoint)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 3 and lines[-1].startswith("NOT erased"), done.stdout + done.stderr
    assert lines[-2] == f"not pushed: the self-check finds the concept still there (below); to publish it anyway: " \
                        f"sd-erase push {out} --repo-id alice/not-erased --license mit"
    assert endpoint.commits == [] and (out / "model_index.json").is_file()  # the output is kept, unpublished


def test_push_to_a_branch_creates_it_and_commits_there(erase_output, endpoint):
    done = sd_erase("push", erase_output, "--repo-id", "alice/branchy", "--license", "mit", "--revision", "dev",
                    "--commit-message", "erased nudity", endpoint=endpoint)
    assert done.returncode == 0, done.stderr
    assert any(r["path"].endswith("/api/models/alice/branchy/branch/dev") for r in endpoint.requests)
    assert endpoint.commits == ["/api/models/alice/branchy/commit/dev"]
    commit = next(r for r in endpoint.requests if "/commit/" in r["path"])
    assert b'"summary": "erased nudity"' in commit["body"]


def test_push_of_a_lora_output_says_how_to_load_it_onto_its_base(tiny_sd, endpoint, tmp_path):
    out = tmp_path / "tiny-uce-lora"
    assert erase_cli("--model", tiny_sd, "--concept", "a cat", "--output", out, "--method", "uce",
                     "--output-format", "lora") == 0
    done = sd_erase("push", out, "--repo-id", "alice/tiny-uce-lora", "--license", "mit", endpoint=endpoint)
    assert done.returncode == 0, done.stderr
    received = tmp_path / "received"
    assert (received / "pytorch_lora_weights.safetensors").is_file() and (received / "erasure.json").is_file()

    from huggingface_hub import ModelCard

    card = ModelCard.load(received / "README.md")
    assert "lora" in card.data.tags and card.data.library_name == "diffusers"
    assert f'DiffusionPipeline.from_pretrained("{tiny_sd}")' in card.text
    assert 'pipe.load_lora_weights("alice/tiny-uce-lora")' in card.text
