"""AdvUnlearn: robust concept erasure by adversarial training of the text encoder (Zhang et al., NeurIPS 2024).

The UNet stays frozen; the text encoder learns to erase the concept even when an attacker puts
soft tokens before the prompt. Each step:

1. (after `warmup_steps`) the attack: k soft prefix embeddings δ, in the text encoder's word
   embedding space, optimised for `attack_steps` steps by Adam (`attack_method` pgd: on the
   gradient; fast_at: on its sign) so that the erased model's prediction under [δ; c] comes back
   to the frozen model's prediction under c — the prefix that re-creates the concept;
2. the erasure: ESD's negative-guidance target on the attacked prompt (ESD-u's objective with the
   text encoder as the trained part),

       L = MSE(ε(z_t, t, E_θ([δ; c])), ε*(z_t, t, a) − η·(ε*(z_t, t, c) − ε*(z_t, t, a)))
         + γ·MSE(ε(z_r, t, E_θ(c_r)), ε*(z_r, t, E*(c_r)))

   where a is the empty prompt (official) or the misaligned prompt the user or the model profile
   pairs with c (what c should draw instead: on captions such as "a red circle" the empty prompt
   takes the colour away with the object), and the second term keeps a batch of retain prompts
   c_r where the frozen model had them.

z_t and z_r are points of partial DDIM trajectories (guidance 3) of c and c_r. The official code
samples them with the frozen UNet and the frozen text encoder's conditioning, so they are the base
model's trajectories whatever the step: here `num_images` of each are sampled once, cached, and
every step draws points from them (a step then costs forward and backward passes only; the paper
draws a fresh trajectory per step).

Defaults follow the official code and README commands (OPTML-Group/AdvUnlearn, train-scripts/
AdvUnlearn.py): every transformer layer and the final layer norm of the text encoder
(`text_encoder_full`), Adam lr 1e-5, 1000 steps of batch 1, the first 200 without attack, one
adversarial token (`adv_prompt_num` 1) put before the prompt (`prefix_k`) in word-embedding space,
30 attack steps at lr 1e-3 from random vocabulary words (`--attack_init random`), a new attack every
step, η = 1, DDIM 50 steps at guidance 3, retain regularisation (`--retain_train reg`) on 5 prompts
per step, γ = 0.3 for nudity and 0.5 for objects and styles, the retain prompts "a photo of
{COCO object}" (`coco_object`). The 64 cached trajectories per set are this project's choice.
The forget prompt is the concept itself, as the official `--prompt nudity`.

SDXL (no official code: it is SD 1.4 only): both text encoders train, the same layers of each as far
as the UNet reads them (the first encoder's last layer and final norm do not reach it: SDXL takes
its penultimate layer; the second one's pooled projection is kept), because the UNet reads both
encoders' token states and the second one's pooled embedding, and a typed attack enters both: an
untrained encoder would be a way back for the concept. The attack is one soft prefix per encoder,
started from the same vocabulary words, each in its encoder's width, optimised together.

The output is a stock pipeline whose text encoder(s) changed and whose UNet is bit-identical; its
`text_encoder/` folder is what AdvUnlearn publishes (`CLIPTextModel.from_pretrained(OUT,
subfolder="text_encoder")` swaps it into any pipeline of the same base).
"""

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from .config import TrajectoryConfig, option
from .errors import EraseError
from .prompts import coco_object_prompts, preset_prompts

CITATION = """@inproceedings{zhang2024defensive,
  title     = {Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models},
  author    = {Zhang, Yimeng and Chen, Xin and Jia, Jinghan and Zhang, Yihua and Fan, Chongyu and Liu, Jiancheng and
               Hong, Mingyi and Ding, Ke and Liu, Sijia},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}"""
RETAIN_LOSS_WEIGHT = {"nudity": 0.3, "class-wise": 0.5}  # official README commands and paper
DATA, ATTACK = "forget and retain data", "adversarial training"
TRAIN_LAYERS = {
    "all": "every transformer layer and the final layer norm",
    "first": "the first transformer layer only",
}


def trains(name: str, train_layers: str, layers_read: int | None = None) -> bool:
    """Whether AdvUnlearn fine-tunes the text encoder parameter `name` (CLIPTextModel names, with or
    without the `text_model.` prefix that transformers 4 puts before them). `layers_read`: how many
    transformer layers the UNet's conditioning reads where it stops before the last (SDXL's first
    encoder, read at its penultimate layer): later layers and the final norm never reach the UNet."""
    name = name.removeprefix("text_model.")
    if layers_read is not None and (name.startswith("final_layer_norm.") or (
            name.startswith("encoder.layers.") and int(name.split(".")[2]) >= layers_read)):
        return False
    if train_layers == "all":
        return name.startswith(("encoder.", "final_layer_norm."))
    if train_layers == "first":
        return name.startswith("encoder.layers.0.")
    raise EraseError(f"unknown `train_layers` {train_layers!r}: choose one of {', '.join(TRAIN_LAYERS)}")


@dataclass
class AdvUnlearnConfig(TrajectoryConfig):
    """AdvUnlearn's settings; each field's help says where its default comes from."""

    steps: int | None = option(None, official=1000, help="optimizer steps (official iterations)", group="training")
    batch_size: int = option(1, help="concept prompts per step and device", group="training")
    forget_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--forget-prompt", metavar="TEXT",
        help="prompt of the concept c (repeatable); default: the model profile's, else the concept itself")
    retain_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--retain-prompt", metavar="TEXT",
        help="prompt kept as it was (repeatable); default: the model profile's, else 'a photo of {object}' over the "
             "80 COCO object categories")
    misaligned_prompts: list[str] = option(
        default_factory=list, group=DATA, flag="--misaligned-prompt", metavar="TEXT",
        help="what the concept's prompt should draw instead (repeatable, paired with forget prompts): the negative "
             "guidance is taken from it instead of the empty prompt; default: the model profile's, else the empty "
             "prompt (official)")
    retain_batch_size: int = option(5, group=DATA, help="retain prompts per step (official retain_batch)")
    retain_loss_weight: float | None = option(None, group="training", help="gamma, weight of the retain loss "
                                              "(default: the model profile's, else 0.3 for nudity, 0.5 otherwise)")
    negative_guidance: float | None = option(None, official=1.0, group="training",
                                             help="eta, how far the concept is pushed away")
    train_layers: Literal["all", "first"] | None = option(
        None, official="all", group="training",
        help="text encoder weights trained: all (every layer and the final norm) or first (layer 0)")
    warmup_steps: int | None = option(None, official=200, group=ATTACK, help="first steps trained without attack")
    attack_tokens: int | None = option(None, official=1, group=ATTACK, help="k, soft tokens put before the prompt")
    attack_steps: int | None = option(None, official=30, group=ATTACK, help="optimisation steps of each attack")
    attack_learning_rate: float | None = option(None, official=1e-3, group=ATTACK,
                                                help="Adam learning rate of the attack")
    attack_method: Literal["pgd", "fast_at"] | None = option(
        None, official="pgd", group=ATTACK, help="pgd (Adam on the gradient) or fast_at (on its sign: the paper's "
                                                 "fast variant)")
    attack_init: Literal["random", "latest"] | None = option(
        None, official="random", group=ATTACK,
        help="start each attack from random vocabulary words, or from the last attack's tokens")
    num_images: int | None = option(None, official=64, group=DATA,
                                    help="base-model trajectories sampled once for each of the concept and retain sets")

    def check(self) -> None:
        super().check()
        self.require_prompts("forget_prompts", "retain_prompts", "misaligned_prompts")
        self.require_positive("retain_batch_size", "attack_tokens", "attack_steps", "attack_learning_rate", "num_images")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise EraseError(f"`warmup_steps` must be 0 or more, got {self.warmup_steps}")
        if self.retain_loss_weight is not None and self.retain_loss_weight < 0:
            raise EraseError(f"`retain_loss_weight` must be 0 or more, got {self.retain_loss_weight}")

    def concept_defaults(self) -> dict:
        preset = preset_prompts(self.concept)
        return {"forget_prompts": [self.concept.strip()], "retain_prompts": coco_object_prompts(self.concept),
                "retain_loss_weight": RETAIN_LOSS_WEIGHT[preset.kind]}

    def narrower(self):
        return replace(self, train_layers="first") if self.train_layers == "all" else None

    def check_with_pipeline(self, pipeline) -> None:
        from .diffusion import check_prompt_lengths, text_encoders

        for tokenizer, _ in text_encoders(pipeline):
            check_prompt_lengths(tokenizer, self.forget_prompts + self.retain_prompts, "AdvUnlearn prompt")
            longest = max(len(tokenizer(p).input_ids) for p in self.forget_prompts)
            if longest + self.attack_tokens > tokenizer.model_max_length:
                raise EraseError(f"a forget prompt of {longest} tokens leaves no room for {self.attack_tokens} attack "
                                 f"tokens in {tokenizer.model_max_length}: shorten it or lower `attack_tokens`")


class _LastAttack:
    """The last attack's soft tokens (one tensor per text encoder), saved with checkpoints so
    `attack_init latest` resumes exactly."""

    def __init__(self):
        self.vectors = None

    def state_dict(self):
        return {"vectors": self.vectors}

    def load_state_dict(self, state):
        self.vectors = state["vectors"]


def erase_pipeline(pipeline, config: AdvUnlearnConfig, session) -> tuple[dict, dict]:
    import itertools

    import torch
    from diffusers import DDIMScheduler

    from .data import base_trajectories, data_resolution
    from .diffusion import (TextConditioning, encode_prompts, encoder_prefixes, per_sample_mse, prefixed_token_ids,
                            seeded_generator, text_encoders, token_ids)
    from .lora_training import TrainedComponents, TrainedWeights
    from .folders import TRAINABLE_COMPONENTS
    from .model_io import weight_components
    from .training import fit, freeze

    accelerator, timer = session.accelerator, session.timer
    device = accelerator.device
    unet, encoders = pipeline.unet, text_encoders(pipeline)
    pipeline.to(device)
    resolution = data_resolution(pipeline, config)
    latent_shape = (unet.config.in_channels, resolution // pipeline.vae_scale_factor, resolution // pipeline.vae_scale_factor)
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(config.synthesis_steps, device=device)
    # E*: the frozen text encoder's conditioning of every prompt, taken before training changes it
    anchors = dict(zip(config.forget_prompts, itertools.cycle(config.misaligned_prompts or [""])))
    frozen_embeddings = encode_prompts(pipeline, config.forget_prompts + config.retain_prompts + list(anchors.values())
                                       + [""], device)
    pools = {}
    with timer.phase("data"):
        for name, prompts in (("concept", config.forget_prompts), ("retain", config.retain_prompts)):
            pools[name] = base_trajectories(
                pipeline, prompts, config.num_images, seed=config.seed, steps=config.synthesis_steps,
                guidance_scale=config.synthesis_guidance_scale, batch_size=config.synthesis_batch_size,
                scheduler=scheduler, embeddings=frozen_embeddings, latent_shape=latent_shape, session=session,
                cache_dir=config.cache_dir, stream=f"advunlearn-{name}")
    pipeline.vae.to("cpu")

    freeze(unet)
    components = [c for c in weight_components(pipeline, TRAINABLE_COMPONENTS) if c != "unet"]  # as text_encoders'
    # SDXL reads the first encoder's penultimate layer; the second's last layer reaches the pooled embedding
    layers_read = {"text_encoder": pipeline.text_encoder.config.num_hidden_layers - 1} if len(encoders) > 1 else {}
    trainable = {name: [n for n, _ in getattr(pipeline, name).named_parameters()
                        if trains(n, config.train_layers, layers_read.get(name))] for name in components}
    tensors = sum(map(len, trainable.values()))
    trained = TrainedComponents([TrainedWeights(pipeline, name, trainable[name], config) for name in components])
    optimizer = torch.optim.Adam(trained.parameters, lr=config.learning_rate)
    model, optimizer = accelerator.prepare(TextConditioning(pipeline), optimizer)
    last_attack = _LastAttack()
    accelerator.register_for_checkpointing(last_attack)
    word_embeddings = [encoder.get_input_embeddings().weight for _, encoder in encoders]
    k, eta, gamma = config.attack_tokens, config.negative_guidance, config.retain_loss_weight
    # token ids per text encoder and prompt, made once: plain, and with the attack's k placeholder positions
    prompts = config.forget_prompts + config.retain_prompts
    plain_ids = [dict(zip(prompts, token_ids(tokenizer, prompts).to(device))) for tokenizer, _ in encoders]
    attack_ids = [dict(zip(config.forget_prompts, prefixed_token_ids(
        tokenizer, config.forget_prompts, k, tokenizer("a", add_special_tokens=False).input_ids[0]).to(device)))
        for tokenizer, _ in encoders]

    def ids_of(table, prompts):
        """Each text encoder's token ids of `prompts` from `table` (plain_ids or attack_ids)."""
        return [torch.stack([ids[p] for p in prompts]) for ids in table]

    rows = range(accelerator.process_index * config.batch_size, (accelerator.process_index + 1) * config.batch_size)

    def points(pool_name, keys, count, stop=None):
        """`count` pool points for the generator `keys`: latents, timesteps, prompts (`stop`: the trajectory
        index, shared by the retain batch with the concept batch as in the official code)."""
        pool, prompts = pools[pool_name]
        g = seeded_generator(config.seed, "advunlearn", *keys)
        if stop is None:
            stop = int(torch.randint(0, config.synthesis_steps, (1,), generator=g))
        chosen = torch.randint(0, len(pool), (count,), generator=g).tolist()
        t = scheduler.timesteps[stop].repeat(count).to(device)
        return pool[chosen, stop].to(device), t, [prompts[i] for i in chosen], stop

    def frozen_prediction(z, t, prompts):
        with torch.no_grad(), accelerator.autocast():
            return unet(z, t, torch.stack([frozen_embeddings[p] for p in prompts])).sample.float()

    def attack(draw, prompts, prefixes):
        """Soft prefix tokens that bring the concept back for the current text encoder(s) (official
        soft_prompt_attack); SDXL: one prefix per encoder, in its own width, from the same words."""
        conditioning = accelerator.unwrap_model(model)
        if config.attack_init == "latest" and last_attack.vectors is not None:
            vectors = [v.to(device).clone() for v in last_attack.vectors]
        else:
            g = seeded_generator(config.seed, "advunlearn-attack-init", draw)
            words = torch.randint(0, min(len(table) for table in word_embeddings), (len(prompts) * k,),
                                  generator=g).to(device)
            vectors = [table.detach()[words].view(len(prompts), k, -1).clone() for table in word_embeddings]
        for v in vectors:
            v.requires_grad_(True)
        attack_optimizer = torch.optim.Adam(vectors, lr=config.attack_learning_rate)
        ids = ids_of(attack_ids, prompts)
        for a in range(config.attack_steps):
            z, t, _, _ = points("concept", (draw, "attack", a), len(prompts))
            target = frozen_prediction(z, t, prompts)
            for prefix, v in zip(prefixes, vectors):
                prefix.vectors = v
            with accelerator.autocast():
                prediction = unet(z, t, conditioning(ids)).sample
            loss = per_sample_mse(prediction, target).mean()
            gradients = torch.autograd.grad(loss, vectors)
            for v, gradient in zip(vectors, gradients):
                v.grad = gradient.sign() if config.attack_method == "fast_at" else gradient
            attack_optimizer.step()
        for prefix in prefixes:
            prefix.vectors = None
        last_attack.vectors = [v.detach() for v in vectors]
        return last_attack.vectors

    def compute_loss(step, micro):
        draw = step * config.gradient_accumulation_steps + micro
        g = seeded_generator(config.seed, "advunlearn-prompts", draw)
        drawn = [config.forget_prompts[int(torch.randint(0, len(config.forget_prompts), (1,), generator=g))]
                 for _ in range(config.batch_size * accelerator.num_processes)]
        prompts = [drawn[j] for j in rows]
        adversarial = step >= config.warmup_steps
        with encoder_prefixes(pipeline) as prefixes:
            vectors = attack(draw, prompts, prefixes) if adversarial else [None] * len(prefixes)
            z, t, _, stop = points("concept", (draw, "erase", accelerator.process_index), len(prompts))
            e_anchor = frozen_prediction(z, t, [anchors[p] for p in prompts])
            target = e_anchor - eta * (frozen_prediction(z, t, prompts) - e_anchor)
            for prefix, v in zip(prefixes, vectors):
                prefix.vectors = v
            with accelerator.autocast():
                prediction = unet(z, t, model(ids_of(attack_ids if adversarial else plain_ids, prompts))).sample
            for prefix in prefixes:
                prefix.vectors = None
            forget_loss = per_sample_mse(prediction, target).mean()
            z_r, t_r, retain, _ = points("retain", (draw, "retain", accelerator.process_index),
                                         config.retain_batch_size, stop)
            retain_target = frozen_prediction(z_r, t_r, retain)
            with accelerator.autocast():
                retain_prediction = unet(z_r, t_r, model(ids_of(plain_ids, retain))).sample
            retain_loss = per_sample_mse(retain_prediction, retain_target).mean()
        loss = forget_loss + gamma * retain_loss
        return loss, {"loss": loss.item(), "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()}

    with timer.phase("training"):
        logs, resumed_from = fit(
            accelerator, model, optimizer, compute_loss, config, checkpoint_dir=session.work_dir,
            step_callback=session.step_callback, show_progress=session.show_progress, description="AdvUnlearn")
    trained.finish()
    pipeline.to(device)
    share = trained.scope_share
    record = {
        "prompts": {"forget": config.forget_prompts, "misaligned": config.misaligned_prompts or [""],
                    "retain": config.retain_prompts[:20]},  # the first 20 of
        "retain_prompt_count": len(config.retain_prompts),
        "steps": config.steps,
        "resumed_from_step": resumed_from,
        "final_losses": logs,
        "trained_parameters": {"components": components, "train_layers": config.train_layers,
                               "tensors": tensors, "share": share},
        "last_attack_tokens": _nearest_tokens(pipeline.tokenizer, word_embeddings[0], last_attack.vectors[0])
                              if last_attack.vectors else None,  # SDXL: the first encoder's words
        "summary": [
            ["trained parameters", f"{' and '.join(c.replace('_', ' ') for c in components)}, "
                                   f"{TRAIN_LAYERS[config.train_layers]}: {tensors} tensors, "
                                   f"{share:.1%} of {'their' if len(components) > 1 else 'its'} weights; the UNet is "
                                   "unchanged"],
            ["objective", f"ESD negative guidance η = {eta} from "
                          f"{'the misaligned prompts' if config.misaligned_prompts else 'the empty prompt'} "
                          f"on the attacked prompt + γ = {gamma} × retain loss "
                          f"({len(config.retain_prompts)} retain prompts, {config.retain_batch_size} per step); latents "
                          f"from {config.num_images} cached base trajectories per set ({config.synthesis_steps} DDIM "
                          f"steps, guidance {config.synthesis_guidance_scale})"],
            ["attack", f"{k} soft prefix token(s), {config.attack_steps} {config.attack_method} steps at lr "
                       f"{config.attack_learning_rate} from {config.attack_init} words, every step after "
                       f"{config.warmup_steps} warm-up steps"],
            ["training", f"{config.steps} Adam steps, batch {config.batch_size}, learning rate {config.learning_rate}, "
                         f"mixed precision {config.mixed_precision}, seed {config.seed}"],
        ],
    }
    trained.add_to(record, config)
    return record, trained.artifacts()


def _nearest_tokens(tokenizer, word_embeddings, vectors) -> list[list[str]]:
    """The vocabulary words nearest (cosine) to the last attack's soft tokens: what the attack had found."""
    import torch

    similarity = torch.nn.functional.cosine_similarity(vectors.flatten(0, 1)[:, None].cpu().float(),
                                                       word_embeddings.detach().cpu().float()[None], dim=-1)
    ids = similarity.argmax(1).view(vectors.shape[0], vectors.shape[1])
    return [[tokenizer.decode([i]).strip() for i in row.tolist()] for row in ids]
