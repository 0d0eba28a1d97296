"""Stable Diffusion pipelines with random weights, built offline.

No weights can be downloaded in tests, CI or benchmarks, so these builders assemble a real
`StableDiffusionPipeline` from configs: `tiny` for tests on a CPU, `sd15` with the exact
SD-1.5 shapes (UNet 859.5M parameters) for GPU benchmarks, and their SD 2.x siblings `tiny-sd2`
and `sd2` (SD 2.1-768's shapes, UNet 865.9M): a wider GELU text encoder (OpenCLIP-H's 1024, its
23 layers as diffusers ships them), `use_linear_projection`, heads per block instead of a head
width, `!` as the padding token and v-prediction (`prediction_type` picks epsilon instead, as in
SD 2.x-base). `tiny-sdxl` and `sdxl` (SDXL-base's shapes, UNet 2.57B) are
`StableDiffusionXLPipeline`s: two text encoders (the second with a projection, whose pooled
output and the image size conditions reach the UNet as `added_cond_kwargs`). The tokenizer is a genuine CLIP byte-level BPE tokenizer written from a word list,
so any prompt tokenizes.
"""

import json
import os
from typing import Iterable

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

DEFAULT_WORDS = (
    "a photo of the an image drawing painting picture person people nude naked wearing clothes "
    "cat dog car church tench parachute truck garbage style art red green blue yellow purple "
    "circle square triangle cross star"
).split()


def _byte_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_clip_tokenizer(folder: str, words: Iterable[str], model_max_length: int = 77,
                         pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Write a CLIP BPE tokenizer whose vocabulary holds every byte plus each word as one token.

    `pad_token` is SD 1.x's `<|endoftext|>` by default; SD 2.x's OpenCLIP tokenizer pads with `!`.

    transformers 5 ignores `vocab_file=` arguments for CLIPTokenizer and silently builds a
    3-token vocabulary, so the files are written to `folder` and loaded with from_pretrained.
    """
    os.makedirs(folder, exist_ok=True)
    byte_to_char = _byte_to_unicode()
    byte_chars = list(byte_to_char.values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = []
    for word in words:
        symbols = [byte_to_char[b] for b in word.lower().encode("utf-8")]
        symbols[-1] += "</w>"
        merged = symbols[0]
        for symbol in symbols[1:]:
            merges.append(f"{merged} {symbol}")
            merged += symbol
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer", "pad_token": pad_token}, f)
    return CLIPTokenizer.from_pretrained(folder)


SIZES = {
    # 0.8M-parameter UNet on 8x8 latents (16x16 images): fast enough for CPU tests.
    "tiny": dict(
        unet=dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16),
        vae=dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=16),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        vocab_size=None,
    ),
    # The shapes of SD 1.5: diffusers' default UNet config is the SD 1.x UNet (859.5M).
    "sd15": dict(
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  hidden_act="quick_gelu"),
        vocab_size=49408,
    ),
    # SD 2.x in small: linear projections in the transformer blocks, heads per block, a 48-wide GELU
    # text encoder (not tiny's 32, so a method that assumes one width fails here).
    "tiny-sd2": dict(
        unet=dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=48, attention_head_dim=(2, 4), use_linear_projection=True,
                  norm_num_groups=16),
        vae=dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=16),
        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  hidden_act="gelu"),
        vocab_size=None, pad_token="!", prediction_type="v_prediction",
    ),
    # The shapes of SD 2.1 (768, v-prediction), as in its diffusers configs.
    "sd2": dict(
        unet=dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                  use_linear_projection=True, upcast_attention=True),
        vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=768),
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                  hidden_act="gelu"),
        vocab_size=49408, pad_token="!", prediction_type="v_prediction",
    ),
}
# SDXL: the UNet's cross-attention width is the two encoders' widths together, and its added
# embedding reads the second encoder's pooled projection plus 6 size/crop ids of `addition_time_embed_dim` each.
XL_SIZES = {
    "tiny-sdxl": dict(
        unet=dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                  attention_head_dim=(2, 4), use_linear_projection=True, addition_time_embed_dim=8,
                  norm_num_groups=16),
        vae=SIZES["tiny"]["vae"],
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"),
        text_2=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    hidden_act="gelu", projection_dim=40),
        vocab_size=None,
    ),
    "sdxl": dict(
        unet=dict(sample_size=128, block_out_channels=(320, 640, 1280),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                  use_linear_projection=True, addition_time_embed_dim=256),
        vae=dict(SIZES["sd15"]["vae"], sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        text=dict(SIZES["sd15"]["text"]),
        text_2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                    hidden_act="gelu", projection_dim=1280),
        vocab_size=49408,
    ),
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SIZE_NAMES = (*SIZES, *XL_SIZES)


def build_random_pipeline(size: str = "tiny", seed: int = 0, tokenizer_dir: str | None = None,
                          prediction_type: str | None = None) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A pipeline of the given size with random weights (seeded), no safety checker or watermarker.

    The tokenizer files go to `tokenizer_dir` (a temporary folder when None); `prediction_type`
    (epsilon, v_prediction, sample) defaults to the size's family: v for SD 2.x, else epsilon.
    """
    if size not in SIZE_NAMES:
        raise ValueError(f"unknown size {size!r}; choose one of {SIZE_NAMES}")
    spec = SIZES.get(size) or XL_SIZES[size]
    prediction_type = prediction_type or spec.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    if tokenizer_dir is None:
        import tempfile

        tokenizer_dir = tempfile.mkdtemp(prefix="sd-erasure-tokenizer-")
    tokenizer = write_clip_tokenizer(tokenizer_dir, DEFAULT_WORDS, pad_token=spec.get("pad_token", "<|endoftext|>"))
    torch.manual_seed(seed)

    def text_config(text: dict) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=spec["vocab_size"] or len(tokenizer),
                              max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                              **{"projection_dim": text["hidden_size"], **text})

    vae = AutoencoderKL(latent_channels=4, **spec["vae"])
    text_encoder = CLIPTextModel(text_config(spec["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    if size in SIZES:
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=UNet2DConditionModel(**spec["unet"]), scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    text_2 = spec["text_2"]
    unet = UNet2DConditionModel(
        cross_attention_dim=spec["text"]["hidden_size"] + text_2["hidden_size"], addition_embed_type="text_time",
        projection_class_embeddings_input_dim=text_2["projection_dim"] + 6 * spec["unet"]["addition_time_embed_dim"],
        **spec["unet"])
    # SDXL's second tokenizer is OpenCLIP's, padding with '!'
    tokenizer_2 = write_clip_tokenizer(tokenizer_dir + "-2", DEFAULT_WORDS, pad_token="!")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                     text_encoder_2=CLIPTextModelWithProjection(text_config(text_2)),
                                     tokenizer_2=tokenizer_2, scheduler=scheduler, add_watermarker=False)
