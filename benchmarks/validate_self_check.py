"""Does the self-check agree with the judge? Erasures that work, half work and do nothing, on the
bundled shapes model, each checked by itself and then measured by the judge.

    python -m benchmarks.validate_self_check                          # 10 concepts x 6 settings (CPU: ~1.5 h)
    python -m benchmarks.validate_self_check --concepts circle red --settings dry-run profile
    python -m benchmarks.validate_self_check --concepts circle red --settings methods   # every other method

Each case is `sd-erase erase --model shapes --concept C` plus the setting's flags, in its own
process (data cached per concept), then `evaluate --suite shapes` with 4 images per prompt. The
check says "erased" or not (erasure.json's `self_check`); the judge says erased when UA ≥ 0.9. Its
retain verdict (drift within budget) is compared with IRA and CRA staying within 0.05 of the base.
Prints a table and the agreement; `--record` appends the rows to benchmarks/results.jsonl.
"""

import argparse
import os
import tempfile
from datetime import datetime, timezone

from benchmarks.bench_erase import RESULTS, append_rows, device_name
from benchmarks.compare_methods import erase_and_evaluate

# Settings that erase, half erase, do nothing or damage the rest; SalUn unless the flags name another method.
SETTINGS = {
    "dry-run": ["--learning-rate", "0"],
    "official": ["--learning-rate", "1e-5", "--scope", "full", "--misaligned-target", "current"],
    "weak": ["--learning-rate", "1e-4"],
    "partial": ["--learning-rate", "3e-4"],
    "profile": [],
    "full-scope": ["--learning-rate", "3e-4", "--scope", "full"],
    "uce-official": ["--method", "uce", "--preserve-scale", "1"],  # the shapes profile preserves 30x harder; not in `methods`
    "uce": ["--method", "uce"],
    # every other method with the model profile's settings; AdvUnlearn shortened to its test's length
    **{m: ["--method", m] for m in ("salun-soft", "esd", "ca", "scissorhands", "fmn", "slug", "erasediff", "seot", "spm")},
    "advunlearn": ["--method", "advunlearn", "--steps", "120", "--warmup-steps", "60", "--attack-steps", "10"],
}
GROUPS = {"methods": list(SETTINGS)[list(SETTINGS).index("uce"):]}  # UCE and every method after it
CONCEPTS = ("circle", "square", "triangle", "cross", "star", "red", "green", "blue", "yellow", "purple")
UA_ERASED, RETAIN_TOLERANCE = 0.9, 0.05


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPTS))
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS) + tuple(GROUPS), default=["dry-run", "official", "partial", "profile", "full-scope", "uce"])
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--record", action="store_true", help=f"append the rows to {os.path.relpath(RESULTS)}")
    args = parser.parse_args(argv)
    settings = [s for name in args.settings for s in GROUPS.get(name, [name])]

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for concept in args.concepts:
            for setting in settings:
                flags = SETTINGS[setting]
                method = flags[flags.index("--method") + 1] if "--method" in flags else "salun"
                extra = [f for i, f in enumerate(flags) if f != "--method" and (i == 0 or flags[i - 1] != "--method")]
                name = f"{setting}-{concept}"
                record, wall, metrics = erase_and_evaluate(method, concept, work, extra, name=name,
                                                           cache=os.path.join(work, f"cache-{concept}"),
                                                           images_per_prompt=args.images_per_prompt)
                check, base, erased = record["self_check"], metrics["base"], metrics["erased"]
                judge_retained = all(erased[k] >= base[k] - RETAIN_TOLERANCE for k in ("IRA", "CRA"))
                row = {"benchmark": "validate_self_check", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "device": device_name(), "concept": concept, "setting": setting, "method": method, "flags": flags,
                       "check_erased": check["erased"], "margin_remaining": check["margin_remaining"],
                       "retain_drift": check["retain_drift"], "check_retained": check["retain_kept"],
                       "judge_erased": erased["UA"] >= UA_ERASED, "judge_retained": judge_retained,
                       "UA": erased["UA"], "IRA": erased["IRA"], "CRA": erased["CRA"],
                       "base": {k: base[k] for k in ("UA", "IRA", "CRA")}, "erase_seconds": round(wall, 1),
                       "self_check_seconds": record["seconds"]["self_check"],
                       "images_per_prompt": args.images_per_prompt,
                       "errors_by_level": {model: check["errors"][model]["by_level"] for model in ("base", "erased")}}
                rows.append(row)
                print(f"{concept:>8} {setting:<8} remaining {row['margin_remaining']:.2f} drift {row['retain_drift']:+.2f} "
                      f"| UA {row['UA']:.2f} IRA {row['IRA']:.2f} CRA {row['CRA']:.2f} | check "
                      f"{'erased' if row['check_erased'] else 'not'} judge {'erased' if row['judge_erased'] else 'not'}",
                      flush=True)
    agree = sum(r["check_erased"] == r["judge_erased"] for r in rows) / len(rows)
    retain_agree = sum(r["check_retained"] == r["judge_retained"] for r in rows) / len(rows)
    false_erased = [f"{r['setting']}-{r['concept']}" for r in rows if r["check_erased"] and r["UA"] < 0.5]
    print(f"\nverdict agrees with the judge: {agree:.0%} of {len(rows)}; retain verdict: {retain_agree:.0%}; "
          f"'erased' while UA < 0.5: {false_erased or 'never'}")
    if args.record:
        append_rows(rows)
    return rows


if __name__ == "__main__":
    main()
