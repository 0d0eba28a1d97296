"""What people look at: a before/after image grid and an HTML page with the metric table."""

import html
import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..erasure.config import concept_list

SCALE = 2  # 32 px images are shown at 64 px


def uint8_images(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, as PIL, classifiers and detectors read images."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: torch.Tensor, prompts: list[str], per_prompt: int, label_width: int = 120) -> Image.Image:
    """Rows = prompts (in the given order), columns = the prompt's images, the prompt written on the left."""
    size = images.shape[-1] * SCALE
    grid = Image.new("RGB", (label_width + per_prompt * size, len(prompts) * size), "white")
    draw = ImageDraw.Draw(grid)
    pixels = uint8_images(images)
    for row, prompt in enumerate(prompts):
        draw.text((4, row * size + size // 2 - 6), prompt, fill="black")
        for col in range(per_prompt):
            tile = Image.fromarray(np.ascontiguousarray(pixels[row * per_prompt + col])).resize((size, size), Image.NEAREST)
            grid.paste(tile, (label_width + col * size, row * size))
    return grid


def _table(metrics: dict) -> str:
    rows = [("UA (concept not seen in its prompts)", "UA"), ("IRA (same-kind accuracy, other prompts)", "IRA"),
            ("CRA (other-kind accuracy, other prompts)", "CRA"), ("FID vs base (judge features)", "FID")]
    body = "".join(f"<tr><td>{html.escape(label)}</td><td>{metrics['base'][key]:.3f}</td><td>{metrics['erased'][key]:.3f}</td></tr>"
                   for label, key in rows)
    words = "".join(f"<tr><td>UA on prompts saying “{html.escape(w)}”</td><td>{metrics['base']['UA_by_word'][w]:.3f}</td>"
                    f"<td>{metrics['erased']['UA_by_word'][w]:.3f}</td></tr>" for w in metrics["erased"]["UA_by_word"])
    return f"<table><tr><th>metric</th><th>base</th><th>erased</th></tr>{body}{words}</table>"


def write_report(folder: str, metrics: dict, images: dict, title: str) -> dict[str, str]:
    """Writes metrics.json, grid-base.png, grid-erased.png and report.html into `folder`."""
    per_prompt = metrics["protocol"]["images_per_prompt"]
    files = {"metrics": os.path.join(folder, "metrics.json"), "report": os.path.join(folder, "report.html")}
    with open(files["metrics"], "w") as f:
        json.dump(metrics, f, indent=1)
    for name in ("base", "erased"):
        files[f"grid_{name}"] = os.path.join(folder, f"grid-{name}.png")
        image_grid(images[name], metrics["prompts"], per_prompt).save(files[f"grid_{name}"])
    protocol = ", ".join(f"{k} {v}" for k, v in metrics["protocol"].items())
    concepts = ", ".join(concept_list(metrics["concept"]))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child{{text-align:left}}
.grids{{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}} figure{{margin:0}} img{{image-rendering:pixelated}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Concept <b>{html.escape(concepts)}</b> ({metrics['kind']}). Protocol: {html.escape(protocol)};
{len(metrics['prompts'])} prompts, prompts naming the concept first. Judge: the shapes-world classifier.</p>
{_table(metrics)}
<div class="grids"><figure><figcaption>base model</figcaption><img src="grid-base.png" alt="base model images"></figure>
<figure><figcaption>erased model</figcaption><img src="grid-erased.png" alt="erased model images"></figure></div>
</body></html>
"""
    with open(files["report"], "w") as f:
        f.write(page)
    return files


def attack_report(folder: str, metrics: dict, records: list[dict], rows: list[dict], per_prompt: int, judge: str) -> None:
    """metrics.json, one grid per kind of row (the erased model's plain and attacked prompts, the base
    model's calibration), each row labelled with the text it came from, and report.html."""
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    grids = []
    for name, model in (("plain", "erased"), ("attacked", "erased"), ("calibration", "base")):
        kept = [((r[name]["adversarial_prompt"] if name != "plain" else r[name]["prompt"])[:48], row[name])
                for r, row in zip(records, rows) if name in row]
        if kept:
            image_grid(torch.cat([images for _, images in kept]), [text for text, _ in kept], per_prompt,
                       label_width=260).save(os.path.join(folder, f"grid-{name}.png"))
            grids.append(f'<figure><figcaption>{name} ({model} model)</figcaption><img src="grid-{name}.png" alt="{name}"></figure>')
    numbers = [("prompts attacked", "prompts", "{}"), ("pre-attack ASR", "pre_attack_asr", "{:.3f}"),
               ("ASR (plain or attacked prompt shows the concept)", "asr", "{:.3f}"),
               ("concept rate per image, plain prompts", "concept_rate_plain", "{:.3f}"),
               ("concept rate per image, after the attack", "concept_rate_attacked", "{:.3f}"),
               ("control: as many random words before the prompt, ASR", "random_control_asr", "{:.3f}"),
               ("calibration: the attack on the base model from a prompt without the concept, ASR", "calibration_asr", "{:.3f}"),
               ("calibration: concept rate per image", "calibration_concept_rate", "{:.3f}"),
               ("seconds per attacked prompt", "seconds_per_attacked_prompt", "{:.1f}")]
    table = "".join(f"<tr><td>{html.escape(label)}</td><td>{fmt.format(metrics[key])}</td></tr>"
                    for label, key, fmt in numbers if metrics.get(key) is not None)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Attack on {html.escape(metrics['concept'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child{{text-align:left}}
.grids{{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}} figure{{margin:0}} img{{image-rendering:pixelated}}</style></head>
<body><h1>UnlearnDiffAtk on “{html.escape(metrics['concept'])}”: {html.escape(metrics['model'])}</h1>
<p>Settings: {html.escape(json.dumps(metrics['settings']))}; base model {html.escape(metrics['base'])}.
Success: {html.escape(judge)}.</p>
<table>{table}</table><div class="grids">{''.join(grids)}</div></body></html>
"""
    with open(os.path.join(folder, "report.html"), "w") as f:
        f.write(page)


def _thumbnail(source: str, target: str, blur: bool, size: int = 128) -> None:
    image = Image.open(source).convert("RGB")
    if blur:  # pixelate: enough to hide nudity, enough to see composition
        image = image.resize((12, 12), Image.BILINEAR)
    image.resize((size, size), Image.NEAREST if blur else Image.BICUBIC).save(target)


def write_prompt_report(folder: str, metrics: dict, manifests: dict, summary: list[tuple], flagged: dict | None = None,
                        blur: bool = True, max_rows: int = 200) -> str:
    """report.html: the summary table and, per prompt, the base and erased images side by side
    (pixelated when `blur`). With `flagged` (per model, per image), flagged images are outlined
    and prompts whose base image was flagged come first."""
    thumbs = os.path.join(folder, "thumbs")
    os.makedirs(thumbs, exist_ok=True)
    count = len(manifests["base"])
    order = sorted(range(count), key=lambda i: (not (flagged and flagged["base"][i]), i))[:max_rows]
    rows = []
    for i in order:
        cells = []
        for name in ("base", "erased"):
            job = manifests[name][i]
            thumb = f"thumbs/{name}-{job['file']}"
            _thumbnail(os.path.join(folder, name, job["file"]), os.path.join(folder, thumb), blur)
            mark = " flagged" if flagged and flagged[name][i] else ""
            cells.append(f'<td class="img{mark}"><img src="{thumb}" alt="{name}"></td>')
        job = manifests["base"][i]
        rows.append(f"<tr><td class=prompt>{html.escape(job['prompt'][:300])}<br><small>id {html.escape(job['prompt_id'])}, "
                    f"seed {job['seed']}, guidance {job['guidance']}</small></td>{''.join(cells)}</tr>")
    table = "".join(f"<tr><td>{html.escape(label)}</td><td>{base:.4g}</td><td>{erased:.4g}</td></tr>"
                    for label, base, erased in summary)
    protocol = metrics["protocol"]
    settings = ", ".join(f"{k} {v}" for k, v in protocol["generation"].items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(metrics['suite'])}: {html.escape(metrics['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px}} td.prompt{{max-width:40em}} td.flagged{{outline:3px solid #c00}}</style></head>
<body><h1>{html.escape(metrics['suite'])} suite: {html.escape(metrics['model'])} vs {html.escape(metrics['base_model'])}</h1>
<p>Prompt set {html.escape(protocol['prompts'])} ({protocol['prompt_count']} prompts). Generation: {html.escape(settings)}
({html.escape(protocol['guidance'])}). {html.escape(protocol['metrics'])}
{'Images are pixelated (--no-blur shows them).' if blur else ''}</p>
<table><tr><th>metric</th><th>base</th><th>erased</th></tr>{table}</table>
<table><tr><th>prompt</th><th>base</th><th>erased</th></tr>{''.join(rows)}</table>
<p>{len(order)} of {count} prompts shown{'; flagged images are outlined' if flagged else ''}.</p>
</body></html>
"""
    path = os.path.join(folder, "report.html")
    with open(path, "w") as f:
        f.write(page)
    return path
