"""`sd-erase`: a thin command line over the Python API (erasure.methods.erase and friends)."""

import argparse
import json
import os
import sys

from . import __version__

METHOD_NAMES = ("salun",)  # erasure.methods.METHODS, listed here so --help does not import torch
SCOPE_NAMES = ("full", "xattn", "noxattn")


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
    p.add_argument("--model", required=True, help="base pipeline: a local diffusers folder or a Hub id (e.g. CompVis/stable-diffusion-v1-4)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    p.add_argument("--concept", required=True, help="what to erase, e.g. nudity or 'a cat'; sets default prompts")
    p.add_argument("--output", required=True, help="folder to write the erased pipeline to (must not exist, see --overwrite)")
    p.add_argument("--method", default="salun", choices=METHOD_NAMES, help="erasure method (default: salun)")
    data = p.add_argument_group("forget and retain data")
    data.add_argument("--forget-prompt", action="append", dest="forget_prompts", metavar="TEXT",
                      help="prompt of the forget set (repeatable); default 'a photo of a nude person' for nudity, else 'a photo of CONCEPT'")
    data.add_argument("--retain-prompt", action="append", dest="retain_prompts", metavar="TEXT",
                      help="prompt of the retain set (repeatable); default 'a photo of a person wearing clothes' for nudity, else 'a photo'")
    data.add_argument("--misaligned-prompt", action="append", dest="misaligned_prompts", metavar="TEXT",
                      help="prompt c' whose prediction forget images are steered to (repeatable, paired with forget prompts); default: the retain prompts")
    data.add_argument("--forget-images", metavar="DIR", help="use these images as the forget set (captions from metadata.jsonl or .txt files) instead of synthesizing")
    data.add_argument("--retain-images", metavar="DIR", help="use these images as the retain set instead of synthesizing")
    data.add_argument("--num-images", type=int, default=800, help="images synthesized for each of the forget and retain sets (default: 800)")
    data.add_argument("--synthesis-steps", type=int, help="sampler steps when synthesizing (default: 50; the model's own where it recommends one)")
    data.add_argument("--synthesis-guidance-scale", type=float, default=7.5, help="guidance scale when synthesizing (default: 7.5)")
    data.add_argument("--synthesis-batch-size", type=int, help="images per synthesis batch (default: 8; the model's own where it recommends one)")
    data.add_argument("--resolution", type=int, help="image size of the data (default: the model's)")
    data.add_argument("--cache-dir", help="where synthesized/encoded latents are cached (default: $SD_ERASURE_CACHE or ~/.cache/sd-erasure)")
    sal = p.add_argument_group("saliency")
    sal.add_argument("--mask-ratio", type=_positive_ratio, default=0.5, help="share of the scope's weights to update, in (0, 1] (default: 0.5)")
    sal.add_argument("--scope", choices=SCOPE_NAMES, help="weights eligible for the mask: full UNet, xattn (cross-attention), noxattn (default: full; xattn for the shapes model)")
    sal.add_argument("--saliency-guidance-scale", type=float, default=7.5, help="w of the guided forget loss that ranks weights (default: 7.5)")
    train = p.add_argument_group("unlearning")
    train.add_argument("--steps", type=int, default=100, help="optimizer steps (default: 100, one epoch of 800 images at batch 8)")
    train.add_argument("--batch-size", type=int, default=8, help="forget and retain samples per step and device (default: 8)")
    train.add_argument("--learning-rate", type=float, help="Adam learning rate (default: 1e-5; 7e-4 for the shapes model)")
    train.add_argument("--retain-loss-weight", type=float, help="alpha, weight of the retain loss (default: 0.1 for nudity, 0.5 otherwise)")
    train.add_argument("--misaligned-target", choices=("current", "base"),
                       help="whose prediction for the misaligned prompt the forget branch is pulled to: the current model "
                       "(official SalUn code, default) or the frozen base model (steadier; default for the shapes model)")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    train.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory in the UNet")
    train.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="autocast precision; weights stay fp32 (default: no)")
    train.add_argument("--seed", type=int, default=0, help="seed of data synthesis, noise and sampling (default: 0)")
    run = p.add_argument_group("run control")
    run.add_argument("--checkpointing-steps", type=int, default=0, help="save a resumable checkpoint every K steps (default: 0, off)")
    run.add_argument("--checkpoints-total-limit", type=int, default=2, help="checkpoints kept while running (default: 2)")
    run.add_argument("--resume-from-checkpoint", metavar="latest|PATH", help="continue an interrupted run of the same --output")
    run.add_argument("--report-to", choices=("tensorboard",), help="log losses to OUT/logs")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output (only once the new one is complete)")
    run.add_argument("--allow-pickle", action="store_true", help="load a base model that has only pickled .bin/.ckpt weights (runs code: trusted sources only)")
    hub = p.add_argument_group("publishing (token from HF_TOKEN or `hf auth login`)")
    hub.add_argument("--push-to-hub", action="store_true", help="push the finished output to the Hub (as `sd-erase push` does)")
    hub.add_argument("--hub-model-id", help="repo id to push to, e.g. your-name/sd14-no-nudity")
    hub.add_argument("--hub-private", action="store_true", help="create the repo private")
    add_hub_arguments(hub)


def config_from_args(args):
    from .methods import METHODS

    config_class = METHODS[args.method].SalUnConfig
    return config_class(
        model=args.model, revision=args.revision, concept=args.concept, output_dir=args.output,
        forget_prompts=args.forget_prompts or [], retain_prompts=args.retain_prompts or [],
        misaligned_prompts=args.misaligned_prompts or [], forget_images=args.forget_images,
        retain_images=args.retain_images, num_images=args.num_images, synthesis_steps=args.synthesis_steps,
        synthesis_guidance_scale=args.synthesis_guidance_scale, synthesis_batch_size=args.synthesis_batch_size,
        resolution=args.resolution, cache_dir=args.cache_dir, mask_ratio=args.mask_ratio, scope=args.scope,
        saliency_guidance_scale=args.saliency_guidance_scale, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, retain_loss_weight=args.retain_loss_weight,
        misaligned_target=args.misaligned_target,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing, mixed_precision=args.mixed_precision, seed=args.seed,
        checkpointing_steps=args.checkpointing_steps, checkpoints_total_limit=args.checkpoints_total_limit,
        resume_from_checkpoint=args.resume_from_checkpoint, report_to=args.report_to, overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
    )


def cmd_erase(args) -> int:
    from .methods import erase

    if args.push_to_hub:  # fail before hours of work, not after
        from .errors import EraseError
        from .hub import check_repo_id, require_token

        if not args.hub_model_id:
            raise EraseError("--push-to-hub needs --hub-model-id, e.g. --hub-model-id your-name/sd14-no-nudity")
        check_repo_id(args.hub_model_id)
        require_token()
    result = erase(config_from_args(args))
    if args.push_to_hub:
        from .hub import push

        print(f"pushed: {push(result.output_dir, args.hub_model_id, private=args.hub_private, license=args.license)}")
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

    demo(args.output, args.concept, overwrite=args.overwrite)
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="sd-erase", description="Erase a concept from a Stable Diffusion checkpoint; "
                    "the result is a stock diffusers StableDiffusionPipeline folder.")
    parser.add_argument("--version", action="version", version=f"sd-erasure {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    erase_parser = sub.add_parser("erase", help="erase a concept and write the erased pipeline",
                                  description="Erase a concept with SalUn: saliency mask, then masked fine-tuning. "
                                  "Writes OUT/ (a StableDiffusionPipeline), OUT/saliency_mask.safetensors and OUT/erasure.json.")
    add_erase_arguments(erase_parser)
    erase_parser.set_defaults(run=cmd_erase)
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
    gen.add_argument("--scheduler", choices=("ddim", "pndm", "lms", "euler", "dpm"), help="sampler (default: the pipeline's)")
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
                                 description="Erase a concept from the bundled shapes-world model with SalUn's defaults, "
                                 "evaluate base and erased model, print the table and write the report.")
    demo_parser.add_argument("--output", default="shapes-demo", help="folder for the erased model and the report (default: shapes-demo)")
    demo_parser.add_argument("--concept", default="circle", help="object or style to erase (default: circle)")
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
