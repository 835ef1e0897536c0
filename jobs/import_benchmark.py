"""`mgie-batch import-benchmark`: a public image-editing benchmark folder -> WebDataset input shards."""

from __future__ import annotations

import argparse
import json

from jobs.arguments import add_reach_flag, reach_from_args

DESCRIPTION = (
    "Convert MagicBrush, EVR, GIER or MA5k, in the layout their authors publish, into input shards "
    "with goal images for `edit` and `eval`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.evaluation.benchmarks import CONVERTERS

    parser.add_argument("benchmark", choices=sorted(CONVERTERS), help="which benchmark layout to read")
    parser.add_argument("--input", required=True, help="benchmark folder (local path or fsspec URL)")
    parser.add_argument("--output", required=True, help="where the shards go (local path, s3://...)")
    parser.add_argument(
        "--split",
        default=None,
        help="split to read (MagicBrush parquet: train/dev; EVR: train/valid/test, default test; "
        "GIER / MA5k: split files of the release; default: the whole annotation file)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per shard (default: 1000)")
    parser.add_argument("--limit", type=int, default=None, help="convert at most this many rows (default: all)")
    parser.add_argument("--evr-images", default=None, help="EVR image folder (default: INPUT/images)")
    parser.add_argument("--evr-first-only", action="store_true", help="EVR: keep only the first request of a pair")
    add_reach_flag(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation.benchmarks import convert_benchmark

    # one set of options serves both sides: the S3 endpoint, when the input or the output is on S3
    reach = reach_from_args(args)
    options = reach.at(args.input).options or reach.at(args.output).options
    extra = {"images": args.evr_images, "first_only": args.evr_first_only} if args.benchmark == "evr" else {}
    report = convert_benchmark(
        args.benchmark,
        args.input,
        args.output,
        split=args.split,
        shard_size=args.shard_size,
        storage_options=options,
        limit=args.limit,
        **extra,
    )
    print(json.dumps({k: report[k] for k in ("benchmark", "rows", "skipped")} | {"shards": len(report["shards"])}))
    for row in report["skipped_rows"][:20]:
        print(f"skipped {row['where']}: {row['reason']}")
    return 0
