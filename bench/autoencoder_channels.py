"""How many latent channels mgie-tiny's VAE needs: the same autoencoder trained with each, side by side.

An edit can only land as close to its goal as the VAE reconstructs the photo, and the held-out checks want the
output within roughly 0.05-0.1 (L1, pixels in [0, 1]) of the goal. This trains mgie-tiny's VAE (the same loss
as `train --stage autoencoder`: L1 + MSE + 1e-4 KL, AdamW 1e-3, 32 images a step) once per channel count, from
the same seed on the same batches, and reports the held-out reconstruction L1 every 100 steps.

    python -m bench.autoencoder_channels --train runs/mgie-tiny-work/train --heldout runs/mgie-tiny-work/heldout

(the two folders are `make train-tiny`'s procedural datasets). Each channel count runs in a process of its
own with one thread, so two counts share a 2-core machine fairly.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.args import bench_parser


def _pixels(folder: str):
    """Every input and goal image of a procedural dataset -> (N, 3, 64, 64) float32 in [-1, 1]."""
    from mgie.images import to_vae_pixels
    from pipeline.evaluation.edit_checks import held_out_rows

    rows = held_out_rows(Path(f).read_bytes() for f in sorted(glob.glob(f"{folder}/shards/*.tar")))
    return to_vae_pixels([image for r in rows for image in (r["input"], r["goal"])])


def train_one(channels: int, steps: int, train_dir: str, heldout_dir: str) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from mgie.config import preset
    from mgie.sampler import build_vae

    torch.set_num_threads(1)
    train, held = _pixels(train_dir), _pixels(heldout_dir)[:128]
    torch.manual_seed(0)
    vae = build_vae(dataclasses.replace(preset("mgie-tiny-init").vae, latent_channels=channels))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0)
    g = torch.Generator().manual_seed(0)
    points, t0 = [], time.time()
    for step in range(1, steps + 1):
        x = train[torch.randint(0, len(train), (32,), generator=g)]  # (32, 3, 64, 64)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)  # (32, C, 16, 16)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            with torch.no_grad():
                back = vae.decode(vae.encode(held).latent_dist.mode()).sample.clamp(-1, 1)
            points.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 4),
                    "heldout_l1": round(((back - held).abs().mean() / 2).item(), 4),  # pixels in [0, 1]
                    "s_per_step": round((time.time() - t0) / step, 3),
                }
            )
            print(json.dumps({"channels": channels, **points[-1]}), flush=True)
    return points


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "40 steps per channel count")
    ap.add_argument("--train", required=True, help="a make-dataset --procedural output folder")
    ap.add_argument("--heldout", required=True, help="the held-out one (its first 64 triplets are judged)")
    ap.add_argument("--channels", default="4,16", help="latent channel counts (default: 4,16)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one channel count
    args = ap.parse_args(argv)
    steps = 40 if args.quick else args.steps
    if args.one is not None:
        train_one(args.one, steps, args.train, args.heldout)
        return 0
    counts = [int(c) for c in args.channels.split(",")]
    base = [
        sys.executable,
        "-m",
        "bench.autoencoder_channels",
        "--train",
        args.train,
        "--heldout",
        args.heldout,
        "--steps",
        str(steps),
    ]
    procs = {c: subprocess.Popen(base + ["--one", str(c)], stdout=subprocess.PIPE, text=True) for c in counts}
    curves = {}
    for c, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            print(f"channels {c} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        curves[str(c)] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    result = {
        "benchmark": "autoencoder_channels",
        "steps": steps,
        "batch": 32,
        "lr": 1e-3,
        "heldout_images": 128,
        "curves": curves,
        "final_heldout_l1": {c: curve[-1]["heldout_l1"] for c, curve in curves.items()},
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out) / f"autoencoder-channels-{'quick' if args.quick else steps}.json"
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["final_heldout_l1"]), "->", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
