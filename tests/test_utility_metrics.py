"""FID/KID, CLIP score and classifier accuracy, offline, on small local models built here."""

import os

import pytest
import torch

from sd_erasure.erasure.errors import EraseError
from sd_erasure.evaluation.judge import JudgeFeatures, load_judge
from sd_erasure.evaluation.shapes import JUDGE_FILE, dataset, to_tensor
from sd_erasure.evaluation.utility import INCEPTION_WEIGHTS, classifier_accuracy, clip_score, fid_kid, load_images


def renders(n, seed):
    return (to_tensor([s.image for s in dataset(n, seed=seed)]) * 255).round().to(torch.uint8)


def test_fid_kid_with_a_custom_extractor_zero_for_identical_sets_large_for_noise():
    features = JudgeFeatures(load_judge(JUDGE_FILE))
    real = renders(200, 1)
    same = fid_kid(real, real, feature=features, kid_subset_size=50)
    # KID's unbiased estimate of identical sets scatters around 0 (subset sampling)
    assert same["FID"] < 1e-3 and abs(same["KID_mean"]) < 0.2
    noise = fid_kid(real, torch.randint(0, 256, real.shape, dtype=torch.uint8), feature=features, kid_subset_size=50)
    other = fid_kid(real, renders(200, 2), feature=features, kid_subset_size=50)
    assert noise["FID"] > 100 * other["FID"] and noise["KID_mean"] > 10 and abs(other["KID_mean"]) < 0.2


def test_inception_without_its_weights_says_which_file_goes_where():
    real = renders(4, 1)
    with pytest.raises(EraseError) as err:
        fid_kid(real, real)
    message = str(err.value)
    assert "torch-fidelity" in message or (INCEPTION_WEIGHTS in message and "checkpoints" in message)


def test_too_few_real_images(tmp_path):
    (tmp_path / "real").mkdir()
    with pytest.raises(EraseError, match="at least 2"):
        load_images(str(tmp_path / "real"))


def tiny_clip(folder):
    """A CLIPModel + CLIPProcessor with random weights, saved offline (the real one cannot be downloaded)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sd_erasure.pipelines.random_sd import write_clip_tokenizer

    tokenizer = write_clip_tokenizer(os.path.join(folder, "tok"), ["a", "red", "circle"], 16)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_runs_with_transformers_5_models(tmp_path):
    path = tiny_clip(str(tmp_path / "clip"))
    images = renders(6, 3)
    score = clip_score(images, ["a red circle"] * 6, path)
    assert 0.0 <= score <= 100.0
    with pytest.raises(EraseError, match="does not exist"):
        clip_score(images, ["a red circle"] * 6, str(tmp_path / "nowhere"))


def test_classifier_accuracy_and_missing_weights(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers import ConvNextImageProcessor  # what microsoft/resnet-50 ships with

    folder = tmp_path / "classifier"
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_labels=3, hidden_sizes=[8, 16], depths=[1, 1],
                                                      embedding_size=8))
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    images = renders(5, 4)
    accuracies = [classifier_accuracy(images, k, str(folder)) for k in range(3)]
    assert sum(accuracies) == pytest.approx(1.0)  # every image goes to exactly one class
    with pytest.raises(EraseError, match="classifier weights .* not found"):
        classifier_accuracy(images, 0, str(tmp_path / "nowhere"))
