"""`mgie-batch import-benchmark`: a public image-editing benchmark folder -> WebDataset input shards."""

from __future__ import annotations

import argparse
import json

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
    parser.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint for s3:// paths (default: $AWS_ENDPOINT_URL or AWS)"
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation.benchmarks import convert_benchmark
    from pipeline.storage import storage_options_for

    # one set of options serves both sides: the S3 endpoint, when the input or the output is on S3
    options = storage_options_for(args.input, args.endpoint_url) or storage_options_for(args.output, args.endpoint_url)
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
