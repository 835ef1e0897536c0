"""Does the diffusion half listen to the instruction? For one photo and one noise, how much the output changes
between two instructions, against how much it changes between two noises under one instruction.

    python -m bench.listening --model runs/mgie-tiny-work/runs/e2e/checkpoints/step-00001000 ...

Pairs of opposite instructions (darker / brighter, black and white / vivid, warmer / cooler, blur / sharpen);
per pair: mean |out(a, noise 1) - out(b, noise 1)| over mean |out(a, noise 1) - out(a, noise 2)|, at the working
size, averaged over held-out photos. Above 1 the instruction moves the output more than the noise does; near 0
the model ignores it. Several checkpoints of one run give the figure's course over training. JSON under
bench/results/.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bench.args import save_figures

PAIRS = (
    ("make it darker", "make it brighter"),
    ("make it black and white", "make the colors more vivid"),
    ("make it warmer", "make it cooler"),
    ("blur the photo", "sharpen the photo"),
)


def listening(model_path: str, photos: int, settings: dict) -> dict:
    import io

    from PIL import Image

    from mgie.model import MGIE
    from pipeline.training.photo_sets import iter_photo_set

    model = MGIE.from_pretrained(model_path, dtype=torch.float32)
    images = [
        Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64))
        for _, data in list(iter_photo_set(f"builtin:heldout:{photos}"))
    ]
    out = {}
    for a, b in PAIRS:
        n = len(images)

        def run(text, seed, n=n):
            r = model.edit(images, [text] * n, seeds=[seed] * n, output_type="np", **settings)
            return np.asarray(r.images)  # (N, H, W, 3) in [0, 1]

        a1, a2, b1 = run(a, 1), run(a, 2), run(b, 1)
        instruction = float(np.abs(a1 - b1).mean())
        noise = float(np.abs(a1 - a2).mean())
        out[f"{a} / {b}"] = {
            "instruction_change": round(instruction, 4),
            "noise_change": round(noise, 4),
            "ratio": round(instruction / max(noise, 1e-6), 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="checkpoint folder (repeat for several)")
    p.add_argument("--photos", type=int, default=3, help="crops per held-out photo (default: 3)")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--json", default="bench/results/listening-mgie-tiny.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = {
        k: v for k, v in (("guidance_scale", args.guidance_scale), ("strength", args.strength)) if v is not None
    }
    result = {"settings": settings, "checkpoints": {}}
    for path in args.model:
        result["checkpoints"][path] = listening(path, args.photos, settings)
        print(path, {k: v["ratio"] for k, v in result["checkpoints"][path].items()}, flush=True)
    save_figures(args.json, result, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
