"""Does a trained checkpoint fail in its UNet or in sampling? One-step denoising against full sampling.

For held-out triplets of a `make-dataset --procedural` folder this measures, as L1 to the goal (pixels in
[0, 1]):
  - the VAE's own floor: the goal encoded and decoded;
  - one step of the UNet: the goal's latent noised to timestep t, the UNet's prediction turned back into a
    clean latent and decoded, for t from 50 to 950 (what training optimises, one timestep at a time);
  - full sampling from pure noise, as `mgie-batch edit` does (the model's scheduler, guidance 1/1 and the
    model's defaults).
A model whose one-step predictions are good at every t but whose samples are not has a sampling problem (or
is weak only at the noisiest steps, which sampling starts from); one bad at every t needs more training.

    python -m bench.denoise_check --model CHECKPOINT --heldout runs/mgie-tiny-work/heldout
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

from bench.args import bench_parser

TIMESTEPS = (50, 200, 400, 600, 800, 950)


def check(model_dir: str, heldout: str, rows: int, steps: int) -> dict:
    import torch
    from diffusers import DDPMScheduler

    from mgie.images import to_vae_pixels
    from mgie.model import MGIE
    from pipeline.evaluation.edit_checks import held_out_rows, spread_rows

    model = MGIE.from_pretrained(model_dir, dtype=torch.float32)
    triplets = held_out_rows(Path(f).read_bytes() for f in sorted(glob.glob(f"{heldout}/shards/*.tar")))
    triplets = spread_rows(triplets, rows)
    inputs, goals = [r["input"] for r in triplets], [r["goal"] for r in triplets]
    s = model.config.scheduler
    forward = DDPMScheduler(
        num_train_timesteps=s.num_train_timesteps,
        beta_start=s.beta_start,
        beta_end=s.beta_end,
        beta_schedule=s.beta_schedule,
        prediction_type=s.prediction_type,
    )
    scale = model.vae.config.scaling_factor
    input_pixels, goal_pixels = to_vae_pixels(inputs), to_vae_pixels(goals)  # (B, 3, H, W) in [-1, 1]

    def l1_to_goal(latents) -> float:  # scaled latents -> decoded L1 to the goal, pixels in [0, 1]
        decoded = model.vae.decode(latents / scale).sample.clamp(-1, 1)
        return round(((decoded - goal_pixels).abs().mean() / 2).item(), 4)

    g = torch.Generator().manual_seed(0)
    result = {"model": model_dir, "prediction_type": s.prediction_type, "rows": len(triplets), "one_step": {}}
    with torch.no_grad():
        cond = model.express(inputs, [r["instruction"] for r in triplets]).conditioning  # (B, S, C)
        image_latents = model.vae.encode(input_pixels).latent_dist.mode()  # (B, c, h, w), unscaled
        goal_latents = model.vae.encode(goal_pixels).latent_dist.mode() * scale
        result["vae_floor"] = l1_to_goal(goal_latents)
        result["identity"] = round(((input_pixels - goal_pixels).abs().mean() / 2).item(), 4)
        for t in TIMESTEPS:
            tt = torch.full((len(triplets),), t)
            noise = torch.randn(goal_latents.shape, generator=g)
            noisy = forward.add_noise(goal_latents, noise, tt)
            pred = model.unet(torch.cat([noisy, image_latents], 1), tt, encoder_hidden_states=cond).sample
            a = forward.alphas_cumprod[t]
            if s.prediction_type == "v_prediction":
                clean = a.sqrt() * noisy - (1 - a).sqrt() * pred
            else:
                clean = (noisy - (1 - a).sqrt() * pred) / a.sqrt()
            result["one_step"][str(t)] = l1_to_goal(clean)
        for name, kwargs in (
            ("sampled_guidance_1", {"guidance_scale": 1.0, "image_guidance_scale": 1.0}),
            ("sampled_defaults", {}),
        ):
            out = model.sample(inputs, cond, num_inference_steps=steps, output_type="np", **kwargs)  # (B, H, W, 3)
            out = torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1
            result[name] = round(((out - goal_pixels).abs().mean() / 2).item(), 4)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "8 rows, 4 sampling steps")
    ap.add_argument("--model", required=True, help="an mgie-batch checkpoint")
    ap.add_argument("--heldout", required=True, help="a make-dataset --procedural output folder")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20, mgie-tiny's)")
    ap.add_argument("--name", default="denoise-check", help="the JSON's file name, without .json")
    args = ap.parse_args(argv)
    result = check(args.model, args.heldout, 8 if args.quick else args.rows, 4 if args.quick else args.steps)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), "->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
