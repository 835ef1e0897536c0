"""`mgie-batch make-dataset`: (image, instruction[, goal]) shards -> IPr2Pr-style training triplets."""

from __future__ import annotations

import argparse

from jobs.edit import EPILOG  # noqa: F401 (the same exit statuses: cli.py shows it under --help)

DESCRIPTION = ("Run MGIE's summarizer pass over every row: the MLLM explains what the edited image will be like, "
               "a Flan-T5-class model condenses it to a concise expressive instruction; with --edit MGIE also "
               "edits the image following that instruction. Output shards hold <key>.input.png, <key>.json "
               "(instruction, explanation, summary), <key>.png (edited, with --edit) and the goal if the input "
               "had one. Resumable like `edit`.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jobs import edit
    from jobs.summarizer_args import add_summarizer_arguments

    edit.add_arguments(parser, expressive=False)
    add_summarizer_arguments(parser)
    parser.add_argument("--edit", action="store_true",
                        help="also edit each image following its summary (default: off: text and input only)")


def _extension(args: argparse.Namespace, cfg):
    from jobs.summarizer_args import summary_pass_from_args
    from pipeline.summarize import make_dataset_extension

    return make_dataset_extension(summary_pass_from_args(args, cfg), edit=args.edit)


def run(args: argparse.Namespace) -> int:
    from jobs.edit import run_job

    return run_job("make-dataset", args, _extension)

