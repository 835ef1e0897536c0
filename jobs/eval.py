"""`mgie-batch eval`: edit shards that carry goal images and score every edit against its goal."""

from __future__ import annotations

import argparse
import json
import logging
import sys

DESCRIPTION = ("Edit every row like `edit`, then score the edit against the row's goal image (L1, SSIM, LPIPS, "
               "CLIP-I, CLIP-T, DINO as MagicBrush defines them): metric_<name> columns in the ledger, "
               "metrics.json and metrics.md under OUTPUT. Resumable like `edit`.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jobs import edit
    from pipeline.metrics import ALL_METRICS

    edit.add_arguments(parser, expressive=False)
    m = parser.add_argument_group("metrics (part of the run fingerprint)")
    m.add_argument("--metrics", default=",".join(ALL_METRICS),
                   help=f"comma-separated metrics to compute (default: {','.join(ALL_METRICS)})")
    m.add_argument("--clip", default=None,
                   help="CLIP directory in transformers' layout for clip_i and clip_t, e.g. an export of "
                        "openai/clip-vit-base-patch32 (default: none; required by those metrics)")
    m.add_argument("--dino", default=None,
                   help="DINO ViT-S/16 directory in transformers' ViTModel layout (default: none; required by dino)")
    m.add_argument("--lpips-backbone", default=None,
                   help="torchvision AlexNet state dict (.pth) for lpips (default: none; required by lpips)")
    m.add_argument("--metric-models", default="paths", choices=["paths", "tiny"],
                   help="'tiny': random metric models built in code, for trial runs and tests; their values "
                        "mean nothing (default: paths)")
    m.add_argument("--metric-seed", type=int, default=0, help="weight seed of the tiny metric models (default: 0)")
    m.add_argument("--metrics-batch-size", type=int, default=None, help="rows per metrics call (default: 16)")


def metrics_config_from_args(args: argparse.Namespace):
    from pipeline.metrics import MetricsConfig

    names = tuple(n.strip().replace("-", "_") for n in args.metrics.split(",") if n.strip())
    return MetricsConfig(metrics=names, clip=args.clip, dino=args.dino, lpips_backbone=args.lpips_backbone,
                         tiny_seed=args.metric_seed if args.metric_models == "tiny" else None).validate()


def run(args: argparse.Namespace) -> int:
    from jobs.edit import config_from_args, format_summary
    from pipeline.evaluate import eval_extension
    from pipeline.ledger import RunConfigMismatch
    from pipeline.metrics import markdown_table
    from pipeline.run import run_edit
    from pipeline.storage import OutputInsideInput

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        metrics = metrics_config_from_args(args)
        resolution = cfg.resolution or int(cfg.model.describe()["config"]["sampler"]["resolution"])
        extension = eval_extension(cfg.model, metrics, resolution, args.metrics_batch_size)
        summary = run_edit(cfg, extension)
    except (ValueError, FileNotFoundError, RunConfigMismatch, OutputInsideInput) as e:
        print(f"mgie-batch eval: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(format_summary(summary))
        print(markdown_table(summary["metrics"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgie-batch eval", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
