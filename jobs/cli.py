"""`mgie-batch COMMAND ...`: one console script, one module per subcommand.

Adding a subcommand: write `jobs/<name>.py` with

    DESCRIPTION = "one line for --help"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...      # the exit status

and add `"<name>": "jobs.<module>"` to COMMANDS below: this module parses and dispatches for every job
(`mgie-batch NAME ...`, or `python -m jobs.cli NAME ...` without the console script). Keep heavy imports
(torch, ray) inside `run` so that `mgie-batch --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "edit": "jobs.edit",
    "status": "jobs.status",
    "demo": "jobs.demo",
    "convert": "jobs.convert",
    "report": "jobs.report",
    "import-benchmark": "jobs.import_benchmark",
    "make-dataset": "jobs.make_dataset",
    "eval": "jobs.eval",
    "train": "jobs.train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgie-batch",
        description="Batch image editing with MGIE on Ray Data.",
        epilog="`mgie-batch COMMAND --help` explains every option of a command with its default.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        description = getattr(module, "DESCRIPTION", None)
        p = sub.add_parser(name, help=description, description=description, epilog=getattr(module, "EPILOG", None))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
