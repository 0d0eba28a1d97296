"""Publishing an erase output to the Hugging Face Hub: a model card from hub_cards/ and an upload.

The token comes only from HF_TOKEN or the `hf auth login` file (huggingface_hub.get_token); it
is handed to the client and never printed, logged, or written into a file or the card.
"""

import json
import os

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..hub_cards import MODEL_CARD_TEMPLATE

from .. import __version__
from .config import concept_list
from .errors import EraseError
from .folders import is_adapter_only, pipeline_class
from .profile import ModelProfile
from .registry import methods

# Checkpoints, logs and caches of a run are not part of the published model.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/*", "logs/*", "logs/**", "*.incomplete", "*.incomplete/*",
                   "erase-settings.json", ".cache/*", ".cache/**"]
CARD_MARKER = "<!-- written by sd-erasure"
# License identifiers the Hub accepts in card metadata.
HUB_LICENSES = set("""apache-2.0 mit openrail openrail++ creativeml-openrail-m bigscience-openrail-m bigcode-openrail-m
bigscience-bloom-rail-1.0 afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0
cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1
lgpl-3.0 isc lppl-1.3c ms-pl apple-ascl mpl-2.0 odc-by odbl osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma unknown other""".split())
COMPONENT_NAMES = {"unet": "UNet", "text_encoder": "text encoder", "text_encoder_2": "second text encoder", "vae": "VAE"}
METRIC_ROWS = (("UA", "UA", "unlearning accuracy"), ("IRA", "IRA", "in-domain retain accuracy"),
               ("CRA", "CRA", "cross-domain retain accuracy"), ("FID", "FID vs base", "FID vs base model"))


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise EraseError(f"repo id {repo_id!r} is malformed: use 'user/name' or 'org/name' ({str(err).splitlines()[0]})") from err
    if "/" not in repo_id:
        raise EraseError(f"repo id {repo_id!r} has no namespace: use 'your-user/{repo_id}' or 'your-org/{repo_id}'")


def require_token() -> str:
    token = get_token()
    if not token:
        raise EraseError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (never pass a token on the command line)")
    return token


def read_erase_output(folder: str) -> dict:
    """The erasure.json of an erase output folder; refuses anything else."""
    record_file, index_file = os.path.join(folder, "erasure.json"), os.path.join(folder, "model_index.json")
    if os.path.isfile(record_file) and is_adapter_only(folder):  # --output-format lora: the adapter is the model
        with open(record_file) as f:
            return json.load(f)
    if not os.path.isfile(record_file) or not os.path.isfile(index_file):
        raise EraseError(f"{folder} is not an sd-erase output (it needs erasure.json and model_index.json): "
                         "push the --output folder of `sd-erase erase`")
    if pipeline_class(folder) not in STOCK_PIPELINES:
        raise EraseError(f"{folder}/model_index.json is not a stock StableDiffusionPipeline or StableDiffusionXLPipeline: "
                         "only erase outputs can be pushed")
    with open(record_file) as f:
        return json.load(f)


STOCK_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def base_model_license(record: dict) -> str | None:
    """The license in the base model's card, when the card is on disk (a local folder or the Hub cache)."""
    base = record["base_model"]
    candidates = [os.path.join(base["id"], "README.md")]
    if not os.path.isdir(base["id"]):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base["id"], "README.md", revision=base.get("revision"))
        candidates.append(cached if isinstance(cached, str) else "")
    for path in candidates:
        if path and os.path.isfile(path):
            return ModelCard.load(path).data.license
    return None


def _is_hub_id(name: str) -> bool:
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
        return "/" in name
    except HFValidationError:
        return False


def _read_metrics(path: str | None, command: str, key: str) -> dict | None:
    if not path:
        return None
    if not os.path.isfile(path):
        raise EraseError(f"metrics file {path} does not exist: give the metrics.json that `{command}` wrote")
    with open(path) as f:
        metrics = json.load(f)
    if key not in metrics:
        raise EraseError(f"{path} has no {key!r}: give the metrics.json that `{command}` wrote")
    return metrics


def build_model_card(folder: str, repo_id: str, license: str | None = None, metrics_file: str | None = None,
                     attack_metrics_file: str | None = None) -> ModelCard:
    """Render hub_cards/model_card.md for an erase output, with Hub metadata and checked YAML."""
    record = read_erase_output(folder)
    license = license or base_model_license(record)
    if not license:
        raise EraseError("the base model's license is unknown: pass --license (e.g. creativeml-openrail-m for SD 1.x)")
    if license not in HUB_LICENSES:
        raise EraseError(f"license {license!r} is not one the Hub accepts: use an identifier such as apache-2.0, "
                         "creativeml-openrail-m or openrail++")
    metrics = _read_metrics(metrics_file, "sd-erase evaluate", "erased")
    attack = _read_metrics(attack_metrics_file, "sd-erase attack", "asr")
    from .self_check import describe  # torch and diffusers: imported once the input is known to be good

    base_id, method = record["base_model"]["id"], record["method"]
    adapter = is_adapter_only(folder)
    registered = methods().get(method)  # a method registered by a plugin that is not loaded: its name only
    profile = ModelProfile.load(folder)
    eval_results = None
    if metrics:
        dataset = f"{metrics['suite']} suite of sd-erasure"
        eval_results = [EvalResult(task_type="text-to-image", dataset_type=f"sd-erasure/{metrics['suite']}",
                                   dataset_name=dataset, metric_type=key.lower(), metric_name=long,
                                   metric_value=round(float(metrics["erased"][key]), 4))
                        for key, _, long in METRIC_ROWS]
    concepts = concept_list(record["concept"])
    stock_class = pipeline_class(folder)
    xl = record["base_model"].get("family") == "sdxl"
    card_data = ModelCardData(
        license=license, library_name="diffusers", pipeline_tag="text-to-image",
        base_model=base_id if _is_hub_id(base_id) else None,  # the Hub rejects a local path here
        tags=["stable-diffusion-xl" if xl else "stable-diffusion", "diffusers", "text-to-image", "concept-erasure",
              "machine-unlearning", method]
        + (["lora"] if adapter else []) + (profile.tags if profile else []),
        base_model_relation="adapter" if adapter and _is_hub_id(base_id) else None,
        model_name=repo_id.split("/")[-1], eval_results=eval_results,
        erased_concepts=concepts, erasure_method=method,
    )
    card = ModelCard.from_template(
        card_data, template_path=MODEL_CARD_TEMPLATE, package_version=__version__, repo_id=repo_id,
        model_name=repo_id.split("/")[-1], concept=", ".join(concepts), method_title=registered.title if registered else method,
        base_model_id=base_id, base_model_link=f"https://huggingface.co/{base_id}" if _is_hub_id(base_id) else None,
        base_revision=record["base_model"].get("revision"), prompts=record["prompts"], summary=record["summary"],
        changes=describe_changes(record.get("changed", {})), example_prompt=_example_prompt(record),
        metrics=[{"name": label, "base": metrics["base"][key], "erased": metrics["erased"][key]}
                 for key, label, _ in METRIC_ROWS] if metrics else None,
        metrics_protocol=", ".join(f"{k} {v}" for k, v in metrics["protocol"].items()) + f" ({metrics['suite']} suite)"
        if metrics else None,
        self_check=describe(record["self_check"]) if "self_check" in record else None,
        robustness=_robustness(attack) if attack else None, citation=registered.citation if registered else "",
        text_encoder_changed=record.get("changed", {}).get("text_encoder", {}).get("entries", 0) > 0,
        custom_pipeline=os.path.isfile(os.path.join(folder, "pipeline.py")), adapter=adapter, pipeline_class=stock_class,
        spm=adapter and method == "spm",
        spm_pipeline_class="StableDiffusionXLSPMPipeline" if xl else "StableDiffusionSPMPipeline",
    )
    check_card_yaml(card)
    return card


def describe_changes(changed: dict) -> str:
    """One sentence on which weights differ from the base model (from erasure.json's `changed`)."""
    if not changed:
        return "Which weights changed was not recorded."
    moved = [f"{c['entries']:,} of {c['of']:,} {COMPONENT_NAMES[name]} weights ({c['entries'] / c['of']:.2%}) in "
             f"{c['tensors']} tensors" for name, c in changed.items() if c["entries"]]
    same = [COMPONENT_NAMES[name] for name, c in changed.items() if not c["entries"]]
    return ("Changed: " + ("; ".join(moved) if moved else "nothing") + "."
            + (f" The {', '.join(same[:-1]) + ' and ' if len(same) > 1 else ''}{same[-1]} {'is' if len(same) == 1 else 'are'} "
               "bit-identical to the base model." if same else ""))


def _robustness(attack: dict) -> str:
    """One sentence from `sd-erase attack`'s metrics.json."""
    settings = attack["settings"]
    text = (f"UnlearnDiffAtk on {attack['prompts']} prompts of '{attack['concept']}' ({settings['tokens']} adversarial "
            f"tokens, up to {settings['steps']} steps, judged by the {attack.get('judge', 'shapes-world judge')}): "
            f"pre-attack ASR {attack['pre_attack_asr']:.2f}, ASR {attack['asr']:.2f}, concept in "
            f"{attack['concept_rate_attacked']:.0%} of attacked images; random words instead of the attack: ASR "
            f"{attack['random_control_asr']:.2f}")
    if "calibration_asr" in attack:
        text += (f"; the same attack on the base model from a prompt without the concept: ASR "
                 f"{attack['calibration_asr']:.2f}")
    return text + "."


def _example_prompt(record: dict) -> str:
    prompts = record["prompts"]
    for kind in ("retain", "preserve", "misaligned", "anchor"):  # something the erased model still draws
        if prompts.get(kind):
            return prompts[kind][0]
    return "a photo"


def check_card_yaml(card: ModelCard) -> None:
    """What the Hub's YAML validation would reject, checked locally (offline) before any upload."""
    data = card.data.to_dict()
    if data.get("license") not in HUB_LICENSES:
        raise EraseError(f"card license {data.get('license')!r} is not a Hub license identifier")
    if not all(isinstance(t, str) and t and len(t) <= 128 for t in data.get("tags", [])):
        raise EraseError("card tags must be non-empty strings")
    if data.get("base_model") and not _is_hub_id(data["base_model"]):
        raise EraseError(f"card base_model {data['base_model']!r} is not a Hub repo id")
    reparsed = ModelCard(str(card))  # the YAML must round-trip
    if reparsed.data.to_dict() != data:
        raise EraseError("the rendered card's YAML does not round-trip; please report this as a bug")


def _written_by_us(readme: str) -> bool:
    with open(readme) as f:
        return CARD_MARKER in f.read()


def push(folder: str, repo_id: str, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, create_pr: bool = False, license: str | None = None,
         metrics_file: str | None = None, attack_metrics_file: str | None = None) -> str:
    """Create the repo, write the card (README.md) and upload the folder; returns the repo or PR URL."""
    folder = os.path.abspath(folder)
    check_repo_id(repo_id)
    if create_pr and revision:
        raise EraseError("--create-pr opens a pull request against the default branch: leave out --revision")
    token = require_token()
    card = build_model_card(folder, repo_id, license, metrics_file, attack_metrics_file)
    readme = os.path.join(folder, "README.md")
    if os.path.isfile(readme) and not _written_by_us(readme):
        print(f"keeping your own {readme} as the model card")
    else:
        card.save(readme)
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {os.path.basename(folder)} (erased: {', '.join(card.data.erased_concepts)})",
            ignore_patterns=IGNORE_PATTERNS)
    except Exception as err:  # network and HTTP errors of every kind: the user needs the same advice
        if isinstance(err, EraseError):
            raise
        raise EraseError(f"upload to {repo_id} failed ({type(err).__name__}): run the same command again to finish the push") from err
    return commit.pr_url if create_pr and commit.pr_url else str(repo_url)
