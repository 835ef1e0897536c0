"""`mgie-batch train`: train MGIE on triplet shards with Ray Train; resumable from its own checkpoints."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.arguments import add_reach_flag, reach_from_args

DESCRIPTION = (
    "Train MGIE (instruction loss + 0.5 x diffusion edit loss, the reference objective) on triplet shards "
    "(make-dataset outputs) with Ray Train's TorchTrainer (DDP). Checkpoints under OUTPUT/checkpoints load "
    "with `--model`; rerun the same command after a crash to continue the same loss curve."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.layout import TrainLayout

    io = parser.add_argument_group("data and output")
    io.add_argument(
        "--input",
        required=True,
        help="triplet shards: a make-dataset output prefix (committed units), a make-dataset "
        "--procedural output, or shard patterns as `edit --input` takes them",
    )
    io.add_argument(
        "--output",
        required=True,
        help=f"run folder or URL: checkpoints/, metrics.jsonl, loss_curve.png, {TrainLayout.RUN_RECORD}",
    )
    add_reach_flag(io)

    m = parser.add_argument_group("model and objective (part of the run identity)")
    m.add_argument(
        "--preset",
        default="reference",
        choices=["reference", "tiny", "mgie-tiny"],
        help="training settings every flag below overrides: 'reference' (lr 5e-4, cosine, 3%% warmup, "
        "256 px, batch 8 per worker), 'tiny' (20 CPU steps at 32 px), 'mgie-tiny' (the small model "
        "trained from scratch at 64 px, see make train-tiny) (default: reference)",
    )
    m.add_argument(
        "--stage",
        default=None,
        choices=["mgie", "autoencoder"],
        help="mgie: the MGIE objective; autoencoder: train only the VAE to reconstruct the shards' "
        "images, the first stage of a model trained from scratch (default: mgie)",
    )
    m.add_argument(
        "--model",
        default=None,
        help="start from a preset with random weights (tiny, mgie-7b) or an mgie-batch checkpoint "
        "(default: the preset's, tiny)",
    )
    m.add_argument("--model-seed", type=int, default=None, help="weight seed of a preset model (default: 0)")
    m.add_argument(
        "--mode",
        default=None,
        choices=["e2e", "ft", "fz"],
        help="e2e: both losses train the MLLM; ft: the MLLM learns from the instruction loss only "
        "(edit-loss gradients stop at the edit head); fz: the MLLM is frozen (default: e2e)",
    )
    m.add_argument("--no-ins-loss", action="store_true", help="drop the instruction loss from the total (default: on)")
    m.add_argument(
        "--lgie", action="store_true", help="language-only ablation: no image tokens in the MLLM prompt (default: off)"
    )
    m.add_argument(
        "--llm-blocks",
        action="store_true",
        help="the LLaMA blocks learn too, for a model without a pretrained LLM (default: frozen, as the reference)",
    )
    m.add_argument("--edit-weight", type=float, default=None, help="weight of the edit loss (default: 0.5)")
    m.add_argument(
        "--min-snr-gamma",
        type=float,
        default=None,
        help="min-SNR-gamma weighting of the edit loss, 0 = off (default: the preset's; reference 0)",
    )
    m.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="EMA of the edit head and UNet, saved as the checkpoint's weights, 0 = off "
        "(default: the preset's; reference 0)",
    )

    o = parser.add_argument_group("optimisation (part of the run identity)")
    o.add_argument("--steps", type=int, default=None, help="optimizer steps in total (default: the preset's)")
    o.add_argument("--batch-size", type=int, default=None, help="rows per worker per step (default: the preset's)")
    o.add_argument("--lr", type=float, default=None, help="peak learning rate, AdamW (default: 5e-4)")
    o.add_argument(
        "--warmup-ratio",
        type=float,
        default=None,
        help="linear warmup as a fraction of the steps, then cosine decay (default: 0.03)",
    )
    o.add_argument("--resolution", type=int, default=None, help="diffusion resolution in px (default: 256)")
    o.add_argument(
        "--precision",
        default=None,
        choices=["auto", "bf16", "fp32"],
        help="auto: bf16 autocast on CUDA, fp32 on CPU (default: auto)",
    )
    o.add_argument("--seed", type=int, default=None, help="data order and noise seed (default: 13331)")

    r = parser.add_argument_group("resources and checkpoints")
    r.add_argument("--workers", type=int, default=None, help="Ray Train workers, one DDP rank each (default: 1)")
    r.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker; 0 = CPU (default: 0)")
    r.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs per worker (default: 1; the tiny preset 0.5 leaves room for the readers)",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker, 0 = OMP_NUM_THREADS as Ray sets it from --cpus-per-worker (default: 0)",
    )
    r.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 500)")
    r.add_argument("--keep-checkpoints", type=int, default=None, help="newest checkpoints kept, 0 = all (default: 3)")
    r.add_argument(
        "--fail-at-step",
        type=int,
        default=None,
        help="testing: fail after this step, as a crash between checkpoints would (default: off)",
    )
    r.add_argument("--json", action="store_true", help="print the summary as JSON (default: text)")


def config_from_args(args: argparse.Namespace):
    from pipeline.training.run import train_preset

    overrides = {
        "input": args.input,
        "output": args.output,
        "s3_endpoint": reach_from_args(args).s3_endpoint,
        "model": args.model,
        "model_seed": args.model_seed,
        "stage": args.stage,
        "mode": args.mode,
        "edit_weight": args.edit_weight,
        "min_snr_gamma": args.min_snr_gamma,
        "ema_decay": args.ema_decay,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_ratio": args.warmup_ratio,
        "resolution": args.resolution,
        "precision": args.precision,
        "seed": args.seed,
        "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker,
        "cpus_per_worker": args.cpus_per_worker,
        "threads": args.threads,
        "checkpoint_every": args.checkpoint_every,
        "keep_checkpoints": args.keep_checkpoints,
        "fail_at_step": args.fail_at_step,
    }
    if args.no_ins_loss:
        overrides["ins_loss"] = False
    if args.lgie:
        overrides["lgie"] = True
    if args.llm_blocks:
        overrides["llm_blocks"] = True
    return train_preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    from pipeline.cluster import ensure_ray
    from pipeline.training.run import TrainConfigMismatch, run_training

    cfg = config_from_args(args)
    try:
        ensure_ray()
        summary = run_training(cfg)
    except TrainConfigMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a worker's failure arrives wrapped by Ray Train; the checkpoints stay for a rerun
        print(f"error: training stopped: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"trained to step {summary['step']} (resumed from {summary['resumed_from_step']}) in "
            f"{summary['seconds']} s; checkpoint {summary['checkpoint']}"
        )
    return 0
