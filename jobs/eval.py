"""`mgie-batch eval`: edit shards that carry goal images and score every edit against its goal."""

from __future__ import annotations

import argparse

from jobs.edit import EPILOG  # noqa: F401 (the same exit statuses: cli.py shows it under --help)

DESCRIPTION = (
    "Edit every row like `edit`, then score the edit against the row's goal image (L1, SSIM, LPIPS, "
    "CLIP-I, CLIP-T, DINO as MagicBrush defines them): metric_<name> columns in the ledger, "
    "metrics.json and metrics.md under OUTPUT. Resumable like `edit`."
)


OUTPUT_DEFAULTS = {"resize": "crop", "output_size": "work", "image_format": "png"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jobs import edit
    from pipeline.evaluation.metric_names import ALL_METRICS  # torch-free: --help must not load torch

    # the reference's square working images, lossless, scored as the model made them; a goal is prepared with
    # the run's --resize like its input (pipeline.evaluation.evaluate), so every mode scores like with like
    edit.add_arguments(parser, expressive=False, output_defaults=OUTPUT_DEFAULTS)
    m = parser.add_argument_group("metrics (part of the run fingerprint)")
    m.add_argument(
        "--metrics",
        default=",".join(ALL_METRICS),
        help=f"comma-separated metrics to compute (default: {','.join(ALL_METRICS)})",
    )
    m.add_argument(
        "--clip",
        default=None,
        help="CLIP directory in transformers' layout for clip_i and clip_t, e.g. an export of "
        "openai/clip-vit-base-patch32 (default: none; required by those metrics)",
    )
    m.add_argument(
        "--dino",
        default=None,
        help="DINO ViT-S/16 directory in transformers' ViTModel layout (default: none; required by dino)",
    )
    m.add_argument(
        "--lpips-backbone",
        default=None,
        help="torchvision AlexNet state dict (.pth) for lpips (default: none; required by lpips)",
    )
    m.add_argument(
        "--metric-models",
        default="paths",
        choices=["paths", "tiny"],
        help="'tiny': random metric models built in code, for trial runs and tests; their values "
        "mean nothing (default: paths)",
    )
    m.add_argument("--metric-seed", type=int, default=0, help="weight seed of the tiny metric models (default: 0)")
    m.add_argument("--metrics-batch-size", type=int, default=None, help="rows per metrics call (default: 16)")


def metrics_config_from_args(args: argparse.Namespace):
    from pipeline.evaluation.metrics import MetricsConfig

    names = tuple(n.strip().replace("-", "_") for n in args.metrics.split(",") if n.strip())
    return MetricsConfig(
        metrics=names,
        clip=args.clip,
        dino=args.dino,
        lpips_backbone=args.lpips_backbone,
        tiny_seed=args.metric_seed if args.metric_models == "tiny" else None,
    ).validate()


def _extension(args: argparse.Namespace, cfg):
    from pipeline.evaluation.evaluate import eval_extension
    from pipeline.identity import resolve_sampler

    metrics = metrics_config_from_args(args)
    # the working size the run edits at, resolved as the run's identity resolves it (one resolver)
    sampler, _ = resolve_sampler(cfg.sampling, cfg.model.describe()["config"])
    return eval_extension(cfg.model, metrics, sampler.resolution, args.metrics_batch_size, resize=cfg.outputs.resize)


def _report(summary: dict) -> str:
    from jobs.edit import format_summary
    from pipeline.evaluation.metrics import markdown_table

    return format_summary(summary) + "\n" + markdown_table(summary["metrics"])


def run(args: argparse.Namespace) -> int:
    from jobs.edit import run_job

    return run_job("eval", args, _extension, _report)
