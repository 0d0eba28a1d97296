"""Training recipe of the bundled shapes-world model and its judge (fixed seed and step counts).

    python -m sd_erasure.evaluation.train_shapes --output evaluation/assets      # ~15 min on 2 CPU cores

1. judge: the CNN of evaluation/judge.py on fresh renders (blank and colourless negatives included);
2. VAE: AutoencoderKL, 32×32 RGB -> 8×8×4 latents, MSE + a small KL term;
3. text encoder (CLIP, tokenizer written offline from the world's words) and UNet with
   cross-attention, trained jointly on the latents: caption dropout for classifier-free
   guidance, EMA weights saved;
4. image tower (for SLUG, which needs a CLIP model whose text tower is the pipeline's text
   encoder): a small CLIP vision transformer aligned to the *frozen* text encoder (LiT-style:
   text side locked, a text projection learned), trained on fresh renders to give every caption
   that describes a render equal probability.
Writes OUTPUT/shapes-sd/ (a stock StableDiffusionPipeline), OUTPUT/shapes-clip/ (a transformers
CLIPModel folder), OUTPUT/shapes-judge.safetensors and OUTPUT/shapes-training.json (settings,
seconds, judge accuracy, the model's prompt fidelity, the image tower's zero-shot accuracy).
`--image-tower-only` trains step 4 alone against an existing OUTPUT/shapes-sd (`--image-tower-only
shapes-sdxl`: one tower per text encoder of OUTPUT/shapes-sdxl, ~4 min each).

A derivative of a trained model, as the community fine-tunes of a base checkpoint are (what an
erasure adapter made on the base is applied to, `sd-erase apply`):

    python -m sd_erasure.evaluation.train_shapes --derive-from evaluation/assets/shapes-sd \
        --output shapes-big --shape-radius 10,14 --num-images 4000 --unet-steps 400 \
        --unet-learning-rate 1e-4 --warmup-steps 50 --ema-decay 0.99 --no-write-profile   # ~7 min

fine-tunes the base's text encoder and UNet on renders of bigger shapes (the same world, judge and
captions) and writes OUTPUT/shapes-sd-derived/ and OUTPUT/derivative.json (its prompt fidelity
and the share of each image the shapes cover, beside the base's: the change it learnt).

The SDXL-architecture model of the same world (`--model shapes-xl`), on the SD model's VAE and
tokenizer, its two text encoders and UNet trained as step 3 trains the SD model's:

    python -m sd_erasure.evaluation.train_shapes --sdxl-from evaluation/assets/shapes-sd --output evaluation/assets

writes OUTPUT/shapes-sdxl/ (a stock StableDiffusionXLPipeline), OUTPUT/shapes-xl-clip/ and
OUTPUT/shapes-xl-clip-2/ (step 4 for each text encoder: SLUG's CLIP models) and
OUTPUT/shapes-sdxl-training.json.
"""

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import (CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel,
                          CLIPTextModelWithProjection)

from ..erasure.profile import PROFILE_FILE
from ..erasure.slug import clip_with_text_encoder
from ..pipelines.random_sd import write_clip_tokenizer

from .judge import accuracy, save_judge, train_judge
from .shapes import OBJECTS, STYLES, TEMPLATES, dataset, style_words, to_tensor, vocabulary, world_profile

MODEL_MAX_LENGTH = 16  # the longest caption is 12 tokens with start and end


@dataclass
class ShapesTrainingConfig:
    seed: int = 0
    num_images: int = 20000
    judge_samples: int = 24000
    judge_epochs: int = 6
    vae_steps: int = 1000
    vae_batch_size: int = 64
    vae_learning_rate: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 5000
    unet_batch_size: int = 64
    unet_learning_rate: float = 5e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    fidelity_images_per_prompt: int = 8
    caption_templates: str = "0,1,2"  # which shapes.TEMPLATES the captions use (the caption mix)
    shape_radius: str = "6.5,11.5"  # the size range of the rendered shapes, in pixels
    write_profile: bool = True  # write the world's sd_erasure_profile.json into the model folder
    def world_samples(self, n: int, seed: int) -> list:
        """n renders of the world with this config's caption mix and shape sizes."""
        return dataset(n, seed=seed, template_ids=tuple(int(i) for i in self.caption_templates.split(",")),
                       radius=tuple(float(r) for r in self.shape_radius.split(",")))

    image_tower_samples: int = 20000
    image_tower_steps: int = 1500
    image_tower_batch_size: int = 256
    image_tower_learning_rate: float = 1e-3


def build_models(tokenizer_dir: str):
    tokenizer = write_clip_tokenizer(tokenizer_dir, vocabulary(), MODEL_MAX_LENGTH)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=64))
    # 8 groups, not 32: GroupNorm over single channels of a 32-channel level wipes out colour.
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=64,
                                attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2)
    return tokenizer, vae, text_encoder, unet


def train_vae(vae, images, config, progress=True):
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate)
    vae.train()
    for step in tqdm(range(config.vae_steps), desc="vae", disable=not progress):
        batch = images[torch.randint(len(images), (config.vae_batch_size,))] * 2 - 1
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, batch) + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    return loss.item()


@torch.no_grad()
def encode_latents(vae, images, batch_size=512):
    return torch.cat([vae.encode(chunk * 2 - 1).latent_dist.mean for chunk in images.split(batch_size)])


def sd_text_conditioning(text_encoder, tokenizer, captions):
    """The SD text conditioning of train_denoiser: encode(batch, dropped) -> (states, None), a dropped
    caption replaced by the empty one (the unconditional branch the pipeline uses)."""
    tokens = tokenizer(captions + [""], padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                       return_tensors="pt").input_ids

    def encode(batch, dropped):
        batch_tokens = tokens[batch].clone()
        batch_tokens[dropped] = tokens[-1]
        return text_encoder(batch_tokens)[0], None
    return encode


def train_denoiser(unet, text_encoders: list, encode, latents, config, progress=True):
    """Train the UNet and `text_encoders` jointly on `latents`; encode(batch, dropped) gives the
    UNet's text states and added conditions for caption indices `batch`, those `dropped` (caption
    dropout, for classifier-free guidance) made unconditional. EMA weights are kept."""
    noise_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    num_train_timesteps=1000)
    models = [unet, *text_encoders]
    parameters = [p for model in models for p in model.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_learning_rate, weight_decay=1e-2)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    averages = [EMAModel(model.parameters(), decay=config.ema_decay) for model in models]
    for model in models:
        model.train()
    progress_bar = tqdm(range(config.unet_steps), desc="text encoder + unet", disable=not progress)
    for step in progress_bar:
        batch = torch.randint(len(latents), (config.unet_batch_size,))
        states, added = encode(batch, torch.rand(len(batch)) < config.caption_dropout)
        noise = torch.randn_like(latents[batch])
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),))
        noisy = noise_scheduler.add_noise(latents[batch], noise, timesteps)
        prediction = unet(noisy, timesteps, states, added_cond_kwargs=added).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        warmup.step()
        for average, model in zip(averages, models):
            average.step(model.parameters())
        if step % 50 == 0:
            progress_bar.set_postfix(loss=f"{loss.item():.4f}")
    for average, model in zip(averages, models):
        average.copy_to(model.parameters())
        model.eval()


def train_image_tower(text_encoder, tokenizer, config, progress=True) -> tuple[CLIPModel, CLIPImageProcessor, dict]:
    """A CLIPModel whose text tower is `text_encoder` (frozen, copied in) and whose image tower and
    both projections are trained: each render's target is uniform over every caption of the world
    that describes it (templates and synonyms alike), so no caption is a false negative. An encoder
    with a projection of its own (SDXL's second, whose projection is the pooled embedding the UNet
    reads) keeps it, frozen, as the text projection, as CLIP ViT-bigG's is SDXL's."""
    vision_config = dict(image_size=32, patch_size=4, num_channels=3, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4)
    model = clip_with_text_encoder(text_encoder, vision_config, projection_dim=64)
    model.text_model.requires_grad_(False)
    if hasattr(text_encoder, "text_projection"):  # the encoder's own, the pooled embedding: kept as it is
        model.text_projection.requires_grad_(False)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    def pair(style, obj):  # index of a (style, object) pair
        return STYLES.index(style) * len(OBJECTS) + OBJECTS.index(obj)

    captioned = [(t.format(style=w, object=o), pair(s, o))
                 for t in TEMPLATES for s in STYLES for w in style_words(s) for o in OBJECTS]
    captions = [caption for caption, _ in captioned]
    described = torch.zeros(len(STYLES) * len(OBJECTS), len(captions))  # (style, object) x caption
    described[[p for _, p in captioned], list(range(len(captions)))] = 1.0
    tokens = tokenizer(captions, padding="max_length", max_length=MODEL_MAX_LENGTH, return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = model.text_model(tokens).pooler_output  # the locked tower's output, once
    samples = dataset(config.image_tower_samples, seed=config.seed + 2)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (processor.image_mean, processor.image_std))
    pixels = (to_tensor([s.image for s in samples]) - mean) / std
    rows = torch.tensor([pair(s.style, s.object) for s in samples])
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.image_tower_learning_rate, weight_decay=1e-2)
    model.train()
    for step in tqdm(range(config.image_tower_steps), desc="image tower", disable=not progress):
        batch = torch.randint(len(samples), (config.image_tower_batch_size,))
        image_embeds = F.normalize(model.visual_projection(model.vision_model(pixels[batch]).pooler_output), dim=-1)
        text_embeds = F.normalize(model.text_projection(pooled), dim=-1)
        logits = model.logit_scale.exp() * image_embeds @ text_embeds.T
        target = described[rows[batch]]
        loss = -(F.log_softmax(logits, 1) * target / target.sum(1, keepdim=True)).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    # zero-shot accuracy on held-out renders, one class per caption of template 0
    heldout = dataset(2000, seed=config.seed + 20_000, template_ids=(0,))
    classes = [TEMPLATES[0].format(style=s, object=o) for s in STYLES for o in OBJECTS]
    with torch.no_grad():
        heldout_pixels = (to_tensor([s.image for s in heldout]) - mean) / std
        image_embeds = F.normalize(model.visual_projection(model.vision_model(heldout_pixels).pooler_output), dim=-1)
        class_tokens = tokenizer(classes, padding="max_length", max_length=MODEL_MAX_LENGTH, return_tensors="pt")
        text_embeds = F.normalize(model.text_projection(model.text_model(class_tokens.input_ids).pooler_output), dim=-1)
        predicted = (image_embeds @ text_embeds.T).argmax(1)
    truth = torch.tensor([pair(s.style, s.object) for s in heldout])
    report = {"zero_shot_accuracy": {"object": float((predicted % len(OBJECTS) == truth % len(OBJECTS)).float().mean()),
                                     "style": float((predicted // len(OBJECTS) == truth // len(OBJECTS)).float().mean()),
                                     "both": float((predicted == truth).float().mean()), "images": len(heldout)},
              "final_loss": loss.item(), "parameters": sum(p.numel() for p in trained)}
    return model, processor, report


def save_image_tower(model, processor, folder: str) -> None:
    partial = folder + ".incomplete"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(partial, folder)


IMAGE_TOWERS = {  # model folder -> (its text encoder, the CLIP model folder aligned to it), and its report
    "shapes-sd": ((("text_encoder", "shapes-clip"),), "shapes-training.json"),
    "shapes-sdxl": ((("text_encoder", "shapes-xl-clip"), ("text_encoder_2", "shapes-xl-clip-2")),
                    "shapes-sdxl-training.json"),
}


def trained_image_tower(text_encoder, tokenizer, config, folder: str, progress: bool = True) -> dict:
    """Train the image tower for `text_encoder`, write the CLIP model to `folder`; its numbers."""
    start = time.perf_counter()
    model, processor, tower = train_image_tower(text_encoder, tokenizer, config, progress)
    tower["seconds"] = round(time.perf_counter() - start, 1)
    tower["config"] = {k: v for k, v in asdict(config).items() if k.startswith("image_tower") or k == "seed"}
    save_image_tower(model, processor, folder)
    return tower


def image_tower_only(output: str, config, model: str = "shapes-sd", progress: bool = True) -> dict:
    """Step 4 against the existing OUTPUT/MODEL (shapes-sd, or shapes-sdxl: a tower per text
    encoder); the numbers go into the model's training report under `image_towers`."""
    from diffusers import DiffusionPipeline

    torch.manual_seed(config.seed)
    pipeline = DiffusionPipeline.from_pretrained(os.path.join(output, model))
    towers, report_name = IMAGE_TOWERS[model]
    trained = {tower_name: trained_image_tower(getattr(pipeline, encoder_name), pipeline.tokenizer, config,
                                               os.path.join(output, tower_name), progress)
               for encoder_name, tower_name in towers}
    report_file = os.path.join(output, report_name)
    report = json.load(open(report_file)) if os.path.isfile(report_file) else {}
    report["image_towers"] = trained
    with open(report_file, "w") as f:
        json.dump(report, f, indent=1)
    return trained


def train(output: str, config: ShapesTrainingConfig = ShapesTrainingConfig(), progress: bool = True) -> dict:
    """Train judge and model; write them into `output` (the model folder appears only when complete)."""
    from .metrics import Protocol, prompt_fidelity

    torch.manual_seed(config.seed)
    seconds = {}
    start = time.perf_counter()
    judge = train_judge(config.judge_samples, config.judge_epochs, seed=config.seed, show_progress=progress)
    judge_accuracy = accuracy(judge, dataset(4000, seed=config.seed + 10_000, with_none=True))
    seconds["judge"] = round(time.perf_counter() - start, 1)

    partial = os.path.join(output, "shapes-sd.incomplete")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer, vae, text_encoder, unet = build_models(os.path.join(partial, "tokenizer"))
    samples = config.world_samples(config.num_images, seed=config.seed + 1)
    images = to_tensor([s.image for s in samples])
    start = time.perf_counter()
    vae_loss = train_vae(vae, images, config, progress)
    latents = encode_latents(vae, images)
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    latents = latents * vae.config.scaling_factor
    seconds["vae"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    train_denoiser(unet, [text_encoder], sd_text_conditioning(text_encoder, tokenizer, [s.caption for s in samples]),
                   latents, config, progress)
    seconds["text_encoder_unet"] = round(time.perf_counter() - start, 1)

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    fidelity = prompt_fidelity(pipeline, judge, Protocol(images_per_prompt=config.fidelity_images_per_prompt))
    tower = trained_image_tower(text_encoder, tokenizer, config, os.path.join(output, "shapes-clip"), progress)
    save_model(pipeline, os.path.join(output, "shapes-sd"), config.write_profile)
    save_judge(judge, os.path.join(output, "shapes-judge.safetensors"))
    report = {"config": asdict(config), "seconds": seconds, "judge_heldout_accuracy": judge_accuracy,
              "vae_final_mse": vae_loss, "prompt_fidelity": fidelity, "image_towers": {"shapes-clip": tower},
              "parameters": {"unet": sum(p.numel() for p in unet.parameters()),
                             "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
                             "vae": sum(p.numel() for p in vae.parameters()),
                             "judge": sum(p.numel() for p in judge.parameters())},
              "torch_threads": torch.get_num_threads()}
    with open(os.path.join(output, "shapes-training.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def save_model(pipeline, final: str, write_profile: bool, profile: dict | None = None) -> None:
    """Write the pipeline (with `profile`, by default the world's, as sd_erasure_profile.json for `sd-erase erase`)
    to `final`, complete or not at all: into `final`.incomplete (which may already hold files, e.g. the
    tokenizer's), then renamed."""
    partial = final + ".incomplete"
    pipeline.save_pretrained(partial, safe_serialization=True)
    if write_profile:
        with open(os.path.join(partial, PROFILE_FILE), "w") as f:
            json.dump(profile or world_profile(), f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)


def shape_cover(pipeline, protocol) -> float:
    """The mean share of an image's pixels that are not near-white: how much of it the shapes cover."""
    from .metrics import generate
    from .shapes import prompts

    images = generate(pipeline, prompts(protocol.template_ids), protocol, show_progress=False)
    return float((images.min(dim=1).values < 0.8).float().mean())


def derive(base: str, output: str, config: ShapesTrainingConfig, progress: bool = True) -> dict:
    """Fine-tune the text encoder and UNet of the pipeline at `base` on the world rendered with
    config's shape sizes and captions; write OUTPUT/shapes-sd-derived and OUTPUT/derivative.json."""
    from .judge import load_judge
    from .metrics import Protocol, prompt_fidelity

    torch.manual_seed(config.seed)
    pipeline = StableDiffusionPipeline.from_pretrained(base, use_safetensors=True)
    samples = config.world_samples(config.num_images, seed=config.seed + 3)
    latents = encode_latents(pipeline.vae, to_tensor([s.image for s in samples])) * pipeline.vae.config.scaling_factor
    protocol = Protocol(images_per_prompt=config.fidelity_images_per_prompt)
    judge = load_judge(os.path.join(os.path.dirname(__file__), "assets", "shapes-judge.safetensors"))
    before = {"prompt_fidelity": prompt_fidelity(pipeline, judge, protocol), "shape_cover": shape_cover(pipeline, protocol)}
    start = time.perf_counter()
    encode = sd_text_conditioning(pipeline.text_encoder, pipeline.tokenizer, [s.caption for s in samples])
    train_denoiser(pipeline.unet, [pipeline.text_encoder], encode, latents, config, progress)
    seconds = round(time.perf_counter() - start, 1)
    after = {"prompt_fidelity": prompt_fidelity(pipeline, judge, protocol), "shape_cover": shape_cover(pipeline, protocol)}
    save_model(pipeline, os.path.join(output, "shapes-sd-derived"), config.write_profile)
    report = {"base": base, "config": asdict(config), "seconds": seconds, "base_model": before, "derivative": after}
    with open(os.path.join(output, "derivative.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def build_xl_models(tokenizer):
    """SDXL's architecture in small for the shapes world: two text encoders of different widths (the
    second with a projection: the pooled embedding), and a UNet that cross-attends to both side by
    side and reads the pooled embedding and the 6 size ids as added conditions."""
    def text_config(width: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                              num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, projection_dim=width)

    text_encoder, text_encoder_2 = CLIPTextModel(text_config(64)), CLIPTextModelWithProjection(text_config(32))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=64 + 32,
                                attention_head_dim=8, use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
                                down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
    return text_encoder, text_encoder_2, unet


def xl_text_conditioning(text_encoder, text_encoder_2, tokenizer, captions, size: int):
    """SDXL's conditioning for train_denoiser, as StableDiffusionXLPipeline.encode_prompt builds it:
    both encoders' penultimate states side by side, the second's pooled projection and the size ids;
    a dropped caption is all zeros (the pipeline's force_zeros_for_empty_prompt)."""
    tokens = tokenizer(captions, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                       return_tensors="pt").input_ids
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)

    def encode(batch, dropped):
        first = text_encoder(tokens[batch], output_hidden_states=True)
        second = text_encoder_2(tokens[batch], output_hidden_states=True)
        kept = (~dropped).float()
        states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1) * kept[:, None, None]
        return states, {"text_embeds": second.text_embeds * kept[:, None], "time_ids": time_ids.expand(len(batch), -1)}
    return encode


def xl_profile() -> dict:
    """The world's profile with SalUn's learning rate for this model (the SD model's 7e-4 erased circle
    here with CRA 0.885 and FID 133, demo protocol; 3e-4 gave UA 1.00, IRA 0.997, CRA 0.972, FID 72)
    and SLUG's CLIP models aligned to its two text encoders."""
    profile = world_profile()
    profile["methods"]["salun"]["learning_rate"] = 3e-4
    profile["methods"]["slug"] |= {"clip_model": "shapes-xl-clip", "clip_model_2": "shapes-xl-clip-2"}
    profile["notes"]["salun"] += (" On the SDXL-architecture model (shapes-xl) 7e-4 erased circle with CRA 0.885 "
                                  "and FID 133; 3e-4 with UA 1.00, IRA 0.997, CRA 0.972, FID 72 (red: UA 1.00, "
                                  "IRA 0.867, CRA 0.996).")
    return profile


def train_xl(base: str, output: str, config: ShapesTrainingConfig, progress: bool = True) -> dict:
    """The shapes world's SDXL-architecture model: the VAE and tokenizer of the SD model at `base`
    (frozen: the same latent space, so the same judge reads both), two new text encoders and an SDXL
    UNet trained jointly as train() trains the SD model, then an image tower per text encoder.
    Writes OUTPUT/shapes-sdxl, OUTPUT/shapes-xl-clip, OUTPUT/shapes-xl-clip-2 and
    OUTPUT/shapes-sdxl-training.json (its prompt fidelity and the towers' zero-shot accuracy)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from .judge import load_judge
    from .metrics import Protocol, prompt_fidelity

    torch.manual_seed(config.seed)
    vae = AutoencoderKL.from_pretrained(os.path.join(base, "vae"))
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(base, "tokenizer"))
    text_encoder, text_encoder_2, unet = build_xl_models(tokenizer)
    samples = config.world_samples(config.num_images, seed=config.seed + 1)
    latents = encode_latents(vae, to_tensor([s.image for s in samples])) * vae.config.scaling_factor
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    start = time.perf_counter()
    encode = xl_text_conditioning(text_encoder, text_encoder_2, tokenizer, [s.caption for s in samples], size)
    train_denoiser(unet, [text_encoder, text_encoder_2], encode, latents, config, progress)
    seconds = round(time.perf_counter() - start, 1)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
    judge = load_judge(os.path.join(os.path.dirname(__file__), "assets", "shapes-judge.safetensors"))
    fidelity = prompt_fidelity(pipeline, judge, Protocol(images_per_prompt=config.fidelity_images_per_prompt))
    towers = {name: trained_image_tower(encoder, tokenizer, config, os.path.join(output, name), progress)
              for encoder, name in ((text_encoder, "shapes-xl-clip"), (text_encoder_2, "shapes-xl-clip-2"))}
    save_model(pipeline, os.path.join(output, "shapes-sdxl"), config.write_profile, xl_profile())
    report = {"base": base, "config": asdict(config), "seconds": {"text_encoders_unet": seconds},
              "prompt_fidelity": fidelity, "image_towers": towers,
              "parameters": {name: sum(p.numel() for p in model.parameters()) for name, model in
                             (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2))},
              "torch_threads": torch.get_num_threads()}
    with open(os.path.join(output, "shapes-sdxl-training.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train the bundled shapes-world model and judge.")
    parser.add_argument("--output", required=True, help="folder for shapes-sd/, shapes-clip/, shapes-judge.safetensors, "
                                                        "shapes-training.json")
    parser.add_argument("--image-tower-only", nargs="?", const="shapes-sd", choices=sorted(IMAGE_TOWERS),
                        help="train only the image tower(s), against the existing OUTPUT/shapes-sd (or shapes-sdxl: "
                             "one per text encoder)")
    parser.add_argument("--derive-from", metavar="FOLDER", help="fine-tune this trained model instead (see the "
                                                               "module's docstring)")
    parser.add_argument("--sdxl-from", metavar="FOLDER", help="train the SDXL-architecture model on this SD "
                                                             "model's VAE and tokenizer instead (see the docstring)")
    for name, value in asdict(ShapesTrainingConfig()).items():
        if isinstance(value, bool):
            parser.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    output, tower_only, derive_from = args.pop("output"), args.pop("image_tower_only"), args.pop("derive_from")
    sdxl_from = args.pop("sdxl_from")
    os.makedirs(output, exist_ok=True)
    if sdxl_from:
        report = train_xl(sdxl_from, output, ShapesTrainingConfig(**args))
        print(json.dumps({k: report[k] for k in ("seconds", "prompt_fidelity")}, indent=1))
        return
    if derive_from:
        report = derive(derive_from, output, ShapesTrainingConfig(**args))
        print(json.dumps({k: report[k] for k in ("seconds", "base_model", "derivative")}, indent=1))
        return
    if tower_only:
        print(json.dumps(image_tower_only(output, ShapesTrainingConfig(**args), tower_only), indent=1))
        return
    report = train(output, ShapesTrainingConfig(**args))
    print(json.dumps({k: report[k] for k in ("seconds", "judge_heldout_accuracy", "prompt_fidelity")}, indent=1))


if __name__ == "__main__":
    main()
