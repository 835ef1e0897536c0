"""Judges a model the way a user gets its output: `mgie-batch edit` on photos at their own size, full-size output.

    python -m bench.judge_tiny --model mgie-tiny                       # held-out photos, held-out phrasings
    python -m bench.judge_tiny --model <ckpt> --photos train --seed 7 \\
        --sweep "guidance_scale=1,1.5,3 image_guidance_scale=1,1.5 strength=1,0.8,0.6"   # validation: choose

`--photos heldout` (chelsea, rocket) are never used in training and say the held-out phrasings; `--photos train
--seed N` are new crops of the training photos at their own size that say the validation phrasings (a
validation split: crops, sizes and wordings no training row has, and none of the held-out wordings) for
choosing a model and its sampler settings without looking at the held-out photos or phrasings. Each setting of a
sweep is one real `mgie-batch edit` run; the JSON keeps every run's per-kind table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.evaluation.full_size_checks import TONE_AND_COLOUR, full_size_rows, judge_output, write_inputs

FLAGS = {
    "guidance_scale": "--guidance-scale",
    "image_guidance_scale": "--image-guidance-scale",
    "strength": "--strength",
    "steps": "--steps",
    "detail_reference": "--detail-reference",
}


def parse_sweep(text: str) -> list[dict[str, str]]:
    """ "a=1,2 b=3" -> [{a: 1, b: 3}, {a: 2, b: 3}]"""
    axes = [(k, v.split(",")) for k, v in (part.split("=", 1) for part in text.split())]
    for k, _ in axes:
        if k not in FLAGS:
            raise SystemExit(f"--sweep: unknown setting {k!r}; known: {', '.join(FLAGS)}")
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])] or [{}]


def edit(model: str, inputs: str, output: str, settings: dict[str, str], log: Path) -> float:
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--model",
        model,
        "--input",
        inputs,
        "--output",
        output,
        "--no-progress",
        "--copy-input",
        *[a for k, v in settings.items() for a in (FLAGS[k], v)],
    ]
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"mgie-batch edit failed (exit {rc}); see {log}")
    return time.time() - t0


def summary_line(report: dict) -> str:
    tone = [k for k in report["passed"] if k in TONE_AND_COLOUR]
    ratios = {k: round(v["l1_ratio"], 2) for k, v in report["kinds"].items()}
    return f"{len(tone)}/10 tone and colour kinds pass ({', '.join(report['passed']) or 'none'}); L1 ratios {ratios}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mgie-tiny")
    p.add_argument("--photos", default="heldout", choices=["heldout", "train"])
    p.add_argument("--crops", type=int, default=5, help="crops per photo, each with every kind (default: 5)")
    p.add_argument("--seed", type=int, default=1, help="crop, strength and phrasing seed (default: 1)")
    p.add_argument("--sweep", default="", help="settings to try, e.g. 'guidance_scale=1,3 strength=1,0.7'")
    p.add_argument("--work", default="runs/judge", help="inputs and outputs (default: runs/judge)")
    p.add_argument("--json", default="", help="where the report goes (default: <work>/judge.json)")
    p.add_argument(
        "--sheet",
        default="",
        help="also a before/after contact sheet PNG of the first run: one row "
        "per tone and colour kind, the photos in turn (default: none)",
    )
    args = p.parse_args(argv)

    work = Path(args.work)
    phrasings = "held-out" if args.photos == "heldout" else "validation"
    rows = full_size_rows(args.photos, args.crops, args.seed, phrasings=phrasings)
    inputs = write_inputs(rows, str(work / "inputs"))
    runs = []
    for i, settings in enumerate(parse_sweep(args.sweep)):
        output = str(work / f"out-{i:02d}")
        shutil.rmtree(output, ignore_errors=True)  # a rerun judges a fresh output, never a resumed one
        seconds = edit(args.model, inputs, output, settings, work / f"edit-{i:02d}.log")
        report = judge_output(rows, output)
        runs.append({"settings": settings, "seconds": round(seconds, 1), **report})
        print(f"{settings or 'model defaults'}: {summary_line(report)} [{seconds:.0f} s]", flush=True)
        if args.sheet and i == 0:
            from pipeline.reporting.contact_sheet import write_contact_sheet

            crops = sorted({r["key"].rsplit("-", 1)[0] for r in rows})
            keys = [
                f"{crops[(j * (args.crops + 1)) % len(crops)]}-{kind}"  # a different crop per kind
                for j, kind in enumerate(TONE_AND_COLOUR)
            ]
            write_contact_sheet(
                output,
                args.sheet,
                limit=len(keys),
                keys=keys,
                title=f"--model {args.model}, held-out photos at their own size: input | output",
            )
    best = max(
        runs,
        key=lambda r: (
            len([k for k in r["passed"] if k in TONE_AND_COLOUR]),
            len(r["passed"]),
            -sum(v["l1_ratio"] for v in r["kinds"].values()),
        ),
    )
    result = {
        "model": args.model,
        "photos": args.photos,
        "phrasings": phrasings,
        "crops": args.crops,
        "seed": args.seed,
        "runs": runs,
        "best_settings": best["settings"],
    }
    out = Path(args.json or work / "judge.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"best: {best['settings'] or 'model defaults'}: {summary_line(best)}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
