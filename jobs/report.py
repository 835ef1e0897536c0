"""`mgie-batch report OUTPUT --html FILE`: a self-contained HTML contact sheet of a run."""

from __future__ import annotations

import argparse

from jobs.arguments import add_reach_flag, reach_from_args

DESCRIPTION = (
    "Write one self-contained HTML page of a run: input, edit (and goal), instructions, status or "
    "error, auto-QA figures and metrics per row; thumbnails embedded, paged, with error and QA-failed "
    "filters and a worst-QA-first sort."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="output prefix of the run (local path, file://, s3://...)")
    parser.add_argument("--html", required=True, help="where to write the page (local path or URL)")
    parser.add_argument("--errors-only", action="store_true", help="embed only rows whose status is not ok")
    parser.add_argument(
        "--max-rows", type=int, default=1000, help="rows embedded in the page, error rows first (default: 1000)"
    )
    parser.add_argument("--page-size", type=int, default=50, help="rows per page in the browser (default: 50)")
    parser.add_argument("--thumb-size", type=int, default=160, help="longest thumbnail side in px (default: 160)")
    parser.add_argument("--title", default=None, help="page title (default: the output prefix)")
    parser.add_argument(
        "--sort",
        default="ledger",
        choices=["ledger", "worst"],
        help="the page's initial order: 'ledger', or 'worst' auto-QA first (failures, then the "
        "lowest CLIP direction or the most extreme change); a control on the page switches "
        "it, as does #sort=worst in the URL (default: ledger)",
    )
    add_reach_flag(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.preflight import StorageProblem, check_s3
    from pipeline.reporting.report import ReportConfig, write_report

    if args.max_rows < 1 or args.page_size < 1 or args.thumb_size < 16:
        raise SystemExit("report: --max-rows and --page-size must be >= 1 and --thumb-size >= 16")
    cfg = ReportConfig(
        errors_only=args.errors_only,
        max_rows=args.max_rows,
        page_size=args.page_size,
        thumb_size=args.thumb_size,
        title=args.title,
        sort=args.sort,
    )
    # the endpoint applies to each s3:// URL the report reads or writes (output, source shards, page)
    try:
        reach = reach_from_args(args)
        check_s3([args.output, args.html], reach)  # a wrong endpoint or bucket: one line in seconds
        result = write_report(args.output, args.html, cfg, reach=reach)
    except (FileNotFoundError, StorageProblem) as e:
        print(f"mgie-batch report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result['html']} ({result['bytes'] / 1e6:.2f} MB)")
    return 0
