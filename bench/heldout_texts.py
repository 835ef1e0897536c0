"""Does the MLLM half read wordings it never saw? The expressive text of every held-out phrasing, checked
for the words that name its kind (the held-out checks' own rule, pipeline/evaluation/edit_checks.py).

    python -m bench.heldout_texts --model mgie-tiny --json bench/results/heldout-texts.json

Text only, no diffusion: seconds on a CPU. One procedural photo per kind (the MLLM sees the image too);
the full held-out judgement (bench/judge_tiny.py) counts the same words over every held-out row.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

from bench.args import save_figures


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mgie-tiny", help="a checkpoint folder or a shipped name (default: mgie-tiny)")
    ap.add_argument("--json", default="", help="where the figures go (default: printed only)")
    args = ap.parse_args(argv)

    from mgie.model import MGIE
    from pipeline.evaluation.edit_checks import names_the_edit
    from pipeline.training.procedural import EDITS

    model = MGIE.from_pretrained(args.model)
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    rows, kinds = [], {}
    for edit in EDITS:
        said = list(edit.held_out_phrasings)
        texts = model.express([photo] * len(said), said).texts
        named = [names_the_edit(edit.name, t) for t in texts]
        kinds[edit.name] = sum(named) / len(named)
        rows += [
            {"kind": edit.name, "instruction": i, "text": t, "names_the_edit": n} for i, t, n in zip(said, texts, named)
        ]
    figures = {
        "model": args.model,
        "named_overall": sum(r["names_the_edit"] for r in rows) / len(rows),
        "named_by_kind": kinds,
        "rows": rows,
    }
    for r in rows:
        print(f"{r['kind']:9s} {'yes' if r['names_the_edit'] else 'NO ':3s} {r['instruction']!r} -> {r['text']!r}")
    print(f"texts naming the edit: {figures['named_overall']:.0%}")
    if args.json:
        print(f"saved {save_figures(args.json, figures)}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
