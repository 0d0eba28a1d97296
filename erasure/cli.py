"""`sd-erase`: a thin command line over the Python API (erasure.methods.erase and friends)."""

import argparse
import json
import os
import sys

from . import __version__

METHOD_NAMES = ("salun", "salun-soft", "esd", "uce")  # erasure.methods.METHODS, here so --help does not import torch
SCOPE_NAMES = ("full", "xattn", "noxattn")
SAMPLER_NAMES = ("ddim", "pndm", "lms", "euler", "dpm")  # erasure.diffusion.SCHEDULERS, likewise
ESD_TRAIN_METHODS = ("u", "x", "x-strict", "all")
# erase options that are not config fields: the CLI itself reads them
CLI_ONLY = {"command", "run", "erase_parser", "method", "push_to_hub", "hub_model_id", "hub_private", "license"}


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (problem + where to look), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class RefuseToken(argparse.Action):
    """A token on the command line ends up in shell history and process lists: refuse it (without echoing it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is refused: a token on the command line leaks into shell history and "
                     "process lists; set HF_TOKEN or run `hf auth login` instead")


def add_hub_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--license", help="license of the published model (default: the base model's, when its card is on disk)")
    for flag in ("--token", "--hub-token"):
        p.add_argument(flag, action=RefuseToken, help=argparse.SUPPRESS)


def _positive_ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]: use e.g. 0.5 to update the most salient half")
    return value


def add_erase_arguments(p: argparse.ArgumentParser) -> None:
    """Options of every method. Defaults live in the config dataclasses (what --help quotes):
    an option left out is not passed, and an option the chosen method does not read is refused."""
    p.add_argument("--model", required=True, help="base pipeline: a local diffusers folder, a Hub id (e.g. CompVis/stable-diffusion-v1-4), or 'shapes' for the bundled model")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    p.add_argument("--concept", required=True, help="what to erase, e.g. nudity or 'a cat'; sets default prompts")
    p.add_argument("--output", dest="output_dir", metavar="OUT", required=True, help="folder to write the erased pipeline to (must not exist, see --overwrite)")
    p.add_argument("--method", default="salun", choices=METHOD_NAMES,
                   help="salun (default), salun-soft (soft saliency mask), esd (negative-guidance fine-tuning), uce (closed-form edit)")
    common = p.add_argument_group("all methods")
    common.add_argument("--seed", type=int, help="seed of data synthesis, noise and sampling (default: 0)")
    common.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help="autocast precision; weights stay fp32 (default: no)")
    common.add_argument("--cache-dir", help="where synthesized/encoded latents are cached (default: $SD_ERASURE_CACHE or ~/.cache/sd-erasure)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing --output (only once the new one is complete)")
    common.add_argument("--allow-pickle", action="store_true", help="load a base model that has only pickled .bin/.ckpt weights (runs code: trusted sources only)")
    data = p.add_argument_group("forget and retain data (salun, salun-soft; esd: --forget-prompt, --num-images and synthesis)")
    data.add_argument("--forget-prompt", action="append", dest="forget_prompts", metavar="TEXT",
                      help="prompt showing the concept (repeatable); default 'a photo of a nude person' for nudity, else 'a photo of CONCEPT' (esd: the concept itself)")
    data.add_argument("--retain-prompt", action="append", dest="retain_prompts", metavar="TEXT",
                      help="prompt of the retain set (repeatable); default 'a photo of a person wearing clothes' for nudity, else 'a photo'")
    data.add_argument("--misaligned-prompt", action="append", dest="misaligned_prompts", metavar="TEXT",
                      help="prompt c' whose prediction forget images are steered to (repeatable, paired with forget prompts); default: the retain prompts")
    data.add_argument("--forget-images", metavar="DIR", help="use these images as the forget set (captions from metadata.jsonl or .txt files) instead of synthesizing")
    data.add_argument("--retain-images", metavar="DIR", help="use these images as the retain set instead of synthesizing")
    data.add_argument("--num-images", type=int, help="images synthesized for each of the forget and retain sets (default: 800; esd with --sample-from base: trajectories, 64)")
    data.add_argument("--synthesis-steps", type=int, help="sampler steps when synthesizing (default: 50; the model's own where it recommends one)")
    data.add_argument("--synthesis-scheduler", choices=SAMPLER_NAMES,
                      help="salun: sampler for synthesis (default: the pipeline's own); dpm reaches the same quality in fewer steps")
    data.add_argument("--synthesis-guidance-scale", type=float, help="guidance scale when synthesizing (default: 7.5; esd: 3)")
    data.add_argument("--synthesis-batch-size", type=int, help="images per synthesis batch (default: 8; the model's own where it recommends one)")
    data.add_argument("--resolution", type=int, help="image size of the data (default: the model's)")
    sal = p.add_argument_group("saliency (salun, salun-soft)")
    sal.add_argument("--mask-ratio", type=_positive_ratio, help="share of the scope's weights to update, in (0, 1] (default: 0.5)")
    sal.add_argument("--scope", choices=SCOPE_NAMES, help="weights eligible for the mask: full UNet, xattn (cross-attention), noxattn (default: full; xattn for the shapes model)")
    sal.add_argument("--saliency-guidance-scale", type=float, help="w of the guided forget loss that ranks weights (default: 7.5)")
    sal.add_argument("--saliency-batch-size", type=int,
                     help="forget samples per gradient batch (default: 8); the mask depends on it, not on the number of processes")
    train = p.add_argument_group("training (salun, salun-soft, esd)")
    train.add_argument("--steps", type=int, help="optimizer steps (default: salun 100, one epoch of 800 images at batch 8; esd 1000)")
    train.add_argument("--batch-size", type=int, help="samples per step and device (default: salun 8, esd 1)")
    train.add_argument("--learning-rate", type=float, help="Adam learning rate (default: 1e-5; the shapes model recommends its own)")
    train.add_argument("--retain-loss-weight", type=float, help="salun: alpha, weight of the retain loss (default: 0.1 for nudity, 0.5 otherwise)")
    train.add_argument("--misaligned-target", choices=("current", "base"),
                       help="salun: whose prediction for the misaligned prompt the forget branch is pulled to: the current model "
                       "(official SalUn code, default) or the frozen base model (steadier; default for the shapes model)")
    train.add_argument("--gradient-accumulation-steps", type=int, help="micro-batches per optimizer step (default: 1)")
    train.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory in the UNet")
    esd = p.add_argument_group("ESD (esd)")
    esd.add_argument("--train-method", choices=ESD_TRAIN_METHODS,
                     help="ESD-u: all but cross-attention (nudity, objects; default), x: cross-attention (styles, people), x-strict: attn2 to_k/to_v, all")
    esd.add_argument("--negative-guidance", type=float, help="eta, how far the concept is pushed away (default: 1)")
    esd.add_argument("--erase-from", metavar="TEXT", help="erase the concept as an attribute of this prompt (e.g. --concept red --erase-from 'a car')")
    esd.add_argument("--sample-from", choices=("current", "base"),
                     help="model whose DDIM trajectories give the training latents: current (paper code, default: resampled each step) "
                     "or base (frozen model, sampled once and cached: much faster)")
    uce = p.add_argument_group("UCE (uce)")
    uce.add_argument("--erase-concept", action="append", dest="erase_concepts", metavar="TEXT", help="concept text to erase (repeatable; default: --concept)")
    uce.add_argument("--guide-concept", action="append", dest="guide_concepts", metavar="TEXT",
                     help="what an erased concept should become (repeatable: one for all, or one per --erase-concept; default: '')")
    uce.add_argument("--preserve-concept", action="append", dest="preserve_concepts", metavar="TEXT", help="concept whose keys and values must not change (repeatable)")
    uce.add_argument("--erase-scale", type=float, help="weight of the erase terms (default: 1)")
    uce.add_argument("--preserve-scale", type=float, help="weight of the preserve terms (default: 1)")
    uce.add_argument("--edit-tokens", choices=("last-word", "to-end"),
                     help="text positions whose keys/values are edited: the last word token (current official code, default) "
                     "or it and all after it (paper-era code; needed where the end tokens carry the concept)")
    uce.add_argument("--regularization", type=float, help="lambda, pull toward the old weights (default: 0.5; 0 can make the solve singular)")
    run = p.add_argument_group("run control (salun, salun-soft, esd)")
    run.add_argument("--checkpointing-steps", type=int, help="save a resumable checkpoint every K steps (default: 0, off)")
    run.add_argument("--checkpoints-total-limit", type=int, help="checkpoints kept while running (default: 2)")
    run.add_argument("--resume-from-checkpoint", metavar="latest|PATH", help="continue an interrupted run of the same --output")
    run.add_argument("--report-to", choices=("tensorboard",), help="log losses to OUT/logs")
    hub = p.add_argument_group("publishing (token from HF_TOKEN or `hf auth login`)")
    hub.add_argument("--push-to-hub", action="store_true", help="push the finished output to the Hub (as `sd-erase push` does)")
    hub.add_argument("--hub-model-id", help="repo id to push to, e.g. your-name/sd14-no-nudity")
    hub.add_argument("--hub-private", action="store_true", help="create the repo private")
    add_hub_arguments(hub)


def config_from_args(args, parser: argparse.ArgumentParser):
    """The method's config from the options given; an option of another method is refused."""
    from dataclasses import fields

    from .errors import EraseError
    from .methods import CONFIGS

    given = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    accepted = {f.name for f in fields(CONFIGS[args.method])}
    for name in given:
        if name not in accepted:
            flag = next(a.option_strings[0] for a in parser._actions if a.dest == name)
            owners = [m for m, c in CONFIGS.items() if name in {f.name for f in fields(c)}]
            raise EraseError(f"{flag} is an option of {', '.join(owners)}, not of --method {args.method}: "
                             f"leave it out or choose --method {owners[0]}")
    return CONFIGS[args.method](**given)


def cmd_erase(args) -> int:
    from .methods import erase

    push_to, private, license = getattr(args, "hub_model_id", None), getattr(args, "hub_private", False), getattr(args, "license", None)
    if getattr(args, "push_to_hub", False):  # fail before hours of work, not after
        from .errors import EraseError
        from .hub import check_repo_id, require_token

        if not push_to:
            raise EraseError("--push-to-hub needs --hub-model-id, e.g. --hub-model-id your-name/sd14-no-nudity")
        check_repo_id(push_to)
        require_token()
    result = erase(config_from_args(args, args.erase_parser))
    if getattr(args, "push_to_hub", False):
        from .hub import push

        print(f"pushed: {push(result.output_dir, push_to, private=private, license=license)}")
    return 0


def cmd_push(args) -> int:
    from .hub import push

    url = push(args.folder, args.repo_id, private=args.private, revision=args.revision,
               commit_message=args.commit_message, create_pr=args.create_pr, license=args.license,
               metrics_file=args.metrics)
    print(f"pushed: {url}")
    return 0


def cmd_random_pipeline(args) -> int:
    from pipelines.random_sd import build_random_pipeline

    from .errors import EraseError
    from .model_io import save_stock_pipeline

    if os.path.exists(args.output):
        raise EraseError(f"{args.output} already exists: choose another folder")
    pipeline = build_random_pipeline(args.size, seed=args.seed, tokenizer_dir=os.path.join(args.output + ".incomplete", "tokenizer"))
    save_stock_pipeline(pipeline, args.output + ".incomplete")
    os.rename(args.output + ".incomplete", args.output)
    print(f"wrote a {args.size} Stable Diffusion pipeline with random weights to {args.output}")
    return 0


SUITE_DEFAULTS = {  # images per prompt, sampler steps, guidance
    "shapes": (8, 25, 4.0),
    "nudity": (1, 50, 7.5),
    "i2p": (1, 50, 7.5),
    "coco": (1, 50, 7.5),
    "imagenette": (10, 50, 7.5),
}


def cmd_evaluate(args) -> int:
    from .errors import EraseError

    images, steps, guidance = SUITE_DEFAULTS[args.suite]
    images = args.images_per_prompt or images
    steps = args.num_inference_steps or steps
    guidance = guidance if args.guidance_scale is None else args.guidance_scale
    if args.suite == "shapes":
        from evaluation.metrics import Protocol
        from evaluation.suite import evaluate_shapes, format_table

        if not args.concept:
            raise EraseError("--suite shapes needs --concept: the erased object or colour, e.g. --concept circle")
        protocol = Protocol(images_per_prompt=images, num_inference_steps=steps, guidance_scale=guidance, seed=args.seed)
        metrics = evaluate_shapes(args.model, args.concept, args.output, base=args.base or "shapes", protocol=protocol,
                                  overwrite=args.overwrite)
        print(format_table(metrics))
    else:
        from evaluation.generate import GenerationSettings
        from evaluation.suite import BLURRED_SUITES, evaluate_prompts

        settings = GenerationSettings(images_per_prompt=images, num_inference_steps=steps,
                                      guidance_scale=None if args.per_prompt_guidance else guidance,
                                      scheduler=args.scheduler, height=args.height, width=args.width,
                                      batch_size=args.batch_size, default_seed=args.seed)
        metrics = evaluate_prompts(args.model, args.output, suite=args.suite, base=args.base, prompts=args.prompts,
                                   categories=args.category, limit=args.limit, min_nudity=args.min_nudity,
                                   settings=settings, threshold=args.threshold,
                                   blur=args.suite in BLURRED_SUITES and not args.no_blur, real_images=args.real_images,
                                   clip_model=args.clip_model, classifier=args.classifier, concept=args.concept)
        if metrics is None:  # the other processes of a sharded run
            return 0
        print(json.dumps({name: {k: v for k, v in metrics[name].items() if not isinstance(v, (dict, list))}
                          for name in ("base", "erased")}, indent=1))
    print(f"report: {os.path.join(os.path.abspath(args.output), 'report.html')}")
    return 0


def cmd_demo(args) -> int:
    from evaluation.suite import demo

    demo(args.output, args.concept, overwrite=args.overwrite, method=args.method)
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="sd-erase", description="Erase a concept from a Stable Diffusion checkpoint; "
                    "the result is a stock diffusers StableDiffusionPipeline folder.")
    parser.add_argument("--version", action="version", version=f"sd-erasure {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    erase_parser = sub.add_parser("erase", help="erase a concept and write the erased pipeline",
                                  argument_default=argparse.SUPPRESS,
                                  description="Erase a concept with SalUn (default), SalUn-soft, ESD or UCE. Writes OUT/ "
                                  "(a stock StableDiffusionPipeline) and OUT/erasure.json, plus the method's side files "
                                  "(SalUn: OUT/saliency_mask.safetensors).")
    add_erase_arguments(erase_parser)
    erase_parser.set_defaults(run=cmd_erase, erase_parser=erase_parser)
    random_parser = sub.add_parser("random-pipeline", help="write a Stable Diffusion pipeline with random weights (smoke tests, benchmarks)",
                                   description="Write a StableDiffusionPipeline with random weights, built offline: "
                                   "'tiny' runs anywhere in seconds, 'sd15' has the exact SD-1.5 shapes.")
    random_parser.add_argument("output", help="folder to create")
    random_parser.add_argument("--size", default="tiny", choices=("tiny", "sd15"), help="tiny (default) or sd15")
    random_parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    random_parser.set_defaults(run=cmd_random_pipeline)
    evaluate_parser = sub.add_parser("evaluate", help="measure an erasure: base vs erased model on the same prompts and seeds",
                                     description="Evaluate an erased model against its base on the same prompts and seeds. "
                                     "shapes: UA/IRA/CRA/FID on the shapes world's judge. nudity (the 142-prompt attack set) "
                                     "and i2p (4,703 prompts): NudeNet detections and nudity rate. coco: FID/KID against real "
                                     "images and CLIP score. imagenette: class-wise UA with a classifier. Writes metrics.json and "
                                     "report.html; generated images stay in OUTPUT/base and OUTPUT/erased (a rerun resumes).")
    evaluate_parser.add_argument("--suite", required=True, choices=tuple(SUITE_DEFAULTS), help="evaluation protocol")
    evaluate_parser.add_argument("--model", required=True, help="the erased pipeline folder")
    evaluate_parser.add_argument("--output", required=True, help="report folder")
    evaluate_parser.add_argument("--base", help="base model to compare with (default: the one in the model's erasure.json; shapes: the bundled model)")
    evaluate_parser.add_argument("--concept", help="shapes: the erased object or colour; imagenette: the erased class")
    evaluate_parser.add_argument("--images-per-prompt", type=int, help="default: 8 (shapes), 1 (nudity, i2p)")
    evaluate_parser.add_argument("--num-inference-steps", type=int, help="sampler steps; default: 25 (shapes), 50")
    evaluate_parser.add_argument("--guidance-scale", type=float, help="fixed guidance; default: 4 (shapes), 7.5")
    evaluate_parser.add_argument("--per-prompt-guidance", action="store_true", help="use each prompt's evaluation_guidance instead")
    evaluate_parser.add_argument("--seed", type=int, default=0, help="seed for prompts without evaluation_seed (default: 0)")
    prompts = evaluate_parser.add_argument_group("prompts (nudity, i2p)")
    prompts.add_argument("--prompts", help="a shipped set (i2p, nudity-142, coco-10k, imagenette, attack-*) or a CSV with a 'prompt' column")
    prompts.add_argument("--category", action="append", help="keep prompts of this I2P category (repeatable), e.g. sexual")
    prompts.add_argument("--min-nudity", type=float, help="keep I2P prompts with nudity_percentage at least this")
    prompts.add_argument("--limit", type=int, help="keep the first N prompts after the filters")
    gen = evaluate_parser.add_argument_group("generation and detection (nudity, i2p)")
    gen.add_argument("--scheduler", choices=SAMPLER_NAMES, help="sampler (default: the pipeline's)")
    gen.add_argument("--height", type=int, help="image height (default: the model's)")
    gen.add_argument("--width", type=int, help="image width (default: the model's)")
    gen.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    gen.add_argument("--threshold", type=float, default=0.6, help="NudeNet score threshold (default: 0.6; 0.45 for the UnlearnDiffAtk protocol)")
    gen.add_argument("--no-blur", action="store_true", help="nudity, i2p: show images unpixelated in the report")
    util = evaluate_parser.add_argument_group("utility (coco, imagenette)")
    util.add_argument("--real-images", help="coco: folder of real images for FID/KID")
    util.add_argument("--clip-model", help="coco: local CLIP folder for CLIP score (e.g. openai/clip-vit-large-patch14 downloaded)")
    util.add_argument("--classifier", help="imagenette: local image-classification folder (e.g. microsoft/resnet-50 downloaded)")
    evaluate_parser.add_argument("--overwrite", action="store_true", help="shapes: replace an existing --output")
    evaluate_parser.set_defaults(run=cmd_evaluate)
    push_parser = sub.add_parser("push", help="publish an erase output to the Hugging Face Hub with a model card",
                                 description="Write a model card (hub_cards/model_card.md) into FOLDER/README.md and upload "
                                 "FOLDER (without checkpoints, logs and caches). The token comes from HF_TOKEN or `hf auth login`.")
    push_parser.add_argument("folder", help="the --output folder of `sd-erase erase`")
    push_parser.add_argument("--repo-id", required=True, help="user/name or org/name")
    push_parser.add_argument("--private", action="store_true", help="create the repo private")
    push_parser.add_argument("--revision", help="branch to push to (created if missing; default: main)")
    push_parser.add_argument("--commit-message", help="message of the upload commit")
    push_parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    push_parser.add_argument("--metrics", help="metrics.json written by `sd-erase evaluate`, shown in the card and its model-index")
    add_hub_arguments(push_parser)
    push_parser.set_defaults(run=cmd_push)
    demo_parser = sub.add_parser("demo", help="erase 'circle' from the bundled shapes model and show before/after",
                                 description="Erase a concept from the bundled shapes-world model with the method's recommended settings, "
                                 "evaluate base and erased model, print the table and write the report.")
    demo_parser.add_argument("--output", default="shapes-demo", help="folder for the erased model and the report (default: shapes-demo)")
    demo_parser.add_argument("--concept", default="circle", help="object or style to erase (default: circle)")
    demo_parser.add_argument("--method", default="salun", choices=METHOD_NAMES, help="erasure method (default: salun)")
    demo_parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    demo_parser.set_defaults(run=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Library warnings (transformers' note on torchvision, diffusers' offline retries) would bury
    # our one-line messages; a user's own TRANSFORMERS_VERBOSITY / DIFFUSERS_VERBOSITY still wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from .errors import EraseError, TrainingDiverged

    try:
        return args.run(args)
    except EraseError as err:
        print(f"sd-erase: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"sd-erase: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sd-erase: interrupted; continue with the same command plus --resume-from-checkpoint latest", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
