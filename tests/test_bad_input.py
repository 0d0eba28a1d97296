"""Bad input: one line naming the problem and the fix, exit code 2, nothing written."""

import json
import os

import pytest

from conftest import FAST, erase_cli


def run_bad(capsys, tmp_path, *args, output=None):
    output = output or tmp_path / "out"
    capsys.readouterr()  # drop what the test's own setup printed
    try:
        code = erase_cli(*args, "--output", output, *FAST)
    except SystemExit as exit_:  # argparse errors exit from inside main()
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert not os.path.exists(output) or os.listdir(output) == os.listdir(tmp_path / "keep"), "output was written"
    assert not os.path.exists(str(output) + ".incomplete")
    return err


@pytest.fixture
def keep(tmp_path):
    (tmp_path / "keep").mkdir()
    return tmp_path / "keep"


def test_missing_model_path(capsys, tmp_path, keep):
    err = run_bad(capsys, tmp_path, "--model", tmp_path / "nowhere", "--concept", "nudity")
    assert "does not exist" in err and "Hub id" in err


def test_folder_that_is_not_a_pipeline(capsys, tmp_path, keep):
    (tmp_path / "empty").mkdir()
    err = run_bad(capsys, tmp_path, "--model", tmp_path / "empty", "--concept", "nudity")
    assert "not a Stable Diffusion pipeline folder" in err and "save_pretrained" in err


def test_other_pipeline_type(capsys, tmp_path, keep):
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    err = run_bad(capsys, tmp_path, "--model", tmp_path / "flux", "--concept", "nudity")
    assert "FluxPipeline" in err


def test_unreachable_hub_id_offline(capsys, tmp_path, keep):
    err = run_bad(capsys, tmp_path, "--model", "CompVis/stable-diffusion-v1-4", "--concept", "nudity")
    assert "could not get" in err and "local diffusers folder" in err


@pytest.mark.parametrize("concept", ["", "   "])
def test_empty_concept(capsys, tmp_path, keep, tiny_sd, concept):
    err = run_bad(capsys, tmp_path, "--model", tiny_sd, "--concept", concept)
    assert "--concept is empty" in err


@pytest.mark.parametrize("ratio", ["0", "1.5", "-0.2"])
def test_mask_ratio_outside_0_1(capsys, tmp_path, keep, tiny_sd, ratio):
    err = run_bad(capsys, tmp_path, "--model", tiny_sd, "--concept", "nudity", "--mask-ratio", ratio)
    assert "outside (0, 1]" in err


def test_unknown_method(capsys, tmp_path, keep, tiny_sd):
    err = run_bad(capsys, tmp_path, "--model", tiny_sd, "--concept", "nudity", "--method", "magic")
    assert "invalid choice: 'magic'" in err and "salun" in err


def test_unknown_scope(capsys, tmp_path, keep, tiny_sd):
    err = run_bad(capsys, tmp_path, "--model", tiny_sd, "--concept", "nudity", "--scope", "everything")
    assert "invalid choice: 'everything'" in err and "xattn" in err


def test_existing_output_is_not_touched(capsys, tmp_path, keep, tiny_sd):
    (keep / "mine.txt").write_text("the user's file")
    err = run_bad(capsys, tmp_path, "--model", tiny_sd, "--concept", "nudity", output=keep)
    assert "already exists" in err and "--overwrite" in err
    assert (keep / "mine.txt").read_text() == "the user's file"


def test_missing_forget_image_folder(capsys, tmp_path, keep, tiny_sd):
    err = run_bad(capsys, tmp_path, "--model", tiny_sd, "--concept", "a cat", "--forget-images", tmp_path / "none")
    assert "does not exist" in err


def test_python_api_raises_the_same_error(tiny_sd, tmp_path):
    from sd_erasure import EraseError, SalUnConfig, erase

    with pytest.raises(EraseError, match=r"outside \(0, 1\]"):
        erase(SalUnConfig(model=str(tiny_sd), concept="nudity", output_dir=str(tmp_path / "o"), mask_ratio=2.0))
    assert not (tmp_path / "o").exists()


def test_pickled_base_weights_are_refused_unless_allowed(capsys, tmp_path, keep, tiny_sd):
    from diffusers import StableDiffusionPipeline

    pickled = tmp_path / "pickled"
    StableDiffusionPipeline.from_pretrained(str(tiny_sd)).save_pretrained(pickled, safe_serialization=False)
    assert not list(pickled.glob("unet/*.safetensors"))
    err = run_bad(capsys, tmp_path, "--model", pickled, "--concept", "nudity")
    assert "pickled" in err and "--allow-pickle" in err
    assert erase_cli("--model", pickled, "--concept", "nudity", "--output", tmp_path / "ok", "--allow-pickle", *FAST) == 0


def test_config_choices_are_the_library_names():
    # configs spell the choices out so that the CLI needs no torch; a new scope or sampler must reach both
    from sd_erasure import SalUnConfig
    from sd_erasure.erasure.config import Sampler, field_type
    from sd_erasure.erasure.diffusion import SCHEDULERS
    from sd_erasure.erasure.saliency import SCOPES

    assert field_type(SalUnConfig, "scope")[1] == tuple(SCOPES)
    assert Sampler.__args__ == tuple(SCHEDULERS)


def test_unknown_synthesis_scheduler_in_the_python_api(tiny_sd, tmp_path):
    from sd_erasure import SalUnConfig, erase
    from sd_erasure.erasure.errors import EraseError

    with pytest.raises(EraseError, match="synthesis_scheduler 'heun' is not one of ddim, pndm"):
        erase(SalUnConfig(model=str(tiny_sd), concept="nudity", output_dir=str(tmp_path / "out"), synthesis_scheduler="heun"))
    assert not os.path.exists(tmp_path / "out")
