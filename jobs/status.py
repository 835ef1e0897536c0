"""`mgie-batch status OUTPUT`: counts per status, per error kind and per source shard; throughput.
`--qa-failed [--json]`: the rows whose auto-QA failed."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.arguments import add_reach_flag, reach_from_args

DESCRIPTION = (
    "Show what an edit run's output holds: rows per status, errors per kind, rows per source shard, "
    "throughput, and whether the last run finished. Safe while a run is going."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="output prefix of the run (local folder, file://, s3://, ...)")
    add_reach_flag(parser)
    parser.add_argument("--shards", type=int, default=20, help="source shards listed in the text view (default: 20)")
    parser.add_argument("--json", action="store_true", help="print everything as JSON (default: text)")
    parser.add_argument(
        "--qa-failed",
        action="store_true",
        help="list the ok rows whose auto-QA failed (qa_pass false) instead: key, source shard and "
        "row, output shard and member, QA figures; with --json a JSON list, for export",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.preflight import StorageProblem, check_s3
    from pipeline.reporting.status import format_qa_failed, format_status, output_status, qa_failed_rows

    try:
        output = reach_from_args(args).at(args.output)
        check_s3([args.output], output.reach)  # a wrong endpoint or bucket: one line in seconds
        st = output_status(output)  # also refuses a prefix that holds no run
        if args.qa_failed:
            rows = qa_failed_rows(output)
    except (FileNotFoundError, StorageProblem) as e:
        print(f"mgie-batch status: {e}", file=sys.stderr)
        return 2
    if args.qa_failed:
        print(json.dumps(rows, indent=2, sort_keys=True) if args.json else format_qa_failed(rows))
    else:
        print(json.dumps(st, indent=2, sort_keys=True) if args.json else format_status(st, args.shards))
    return 0
