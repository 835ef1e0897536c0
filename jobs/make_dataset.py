"""`mgie-batch make-dataset`: (image, instruction[, goal]) shards -> IPr2Pr-style training triplets."""

from __future__ import annotations

import argparse

from jobs.arguments import reach_from_args
from jobs.edit import EPILOG  # noqa: F401 (the same exit statuses: cli.py shows it under --help)

DESCRIPTION = (
    "Run MGIE's summarizer pass over every row: the MLLM explains what the edited image will be like, "
    "a Flan-T5-class model condenses it to a concise expressive instruction; with --edit MGIE also "
    "edits the image following that instruction. Output shards hold <key>.input.png, <key>.json "
    "(instruction, explanation, summary), <key>.png (edited, with --edit) and the goal if the input "
    "had one. Resumable like `edit`."
)


OUTPUT_DEFAULTS = {"resize": "crop", "output_size": "work", "image_format": "png"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jobs import edit
    from jobs.arguments import add_summarizer_arguments

    # training triplets: the reference's square working images, lossless, at the size the model saw
    edit.add_arguments(parser, expressive=False, output_defaults=OUTPUT_DEFAULTS)
    add_summarizer_arguments(parser)
    parser.add_argument(
        "--edit",
        action="store_true",
        help="also edit each image following its summary (default: off: text and input only)",
    )
    procedural = parser.add_argument_group("procedural triplets (no model: known global edits of photos)")
    procedural.add_argument(
        "--procedural",
        action="store_true",
        help="build triplets from the photos under --input (a folder, glob or image shards) "
        "by known global edits (brightness, contrast, sepia, blur, ...), each with several "
        "instruction phrasings and an expressive instruction naming the edit; seeded by "
        "--seed, at --resolution (default 256) (default: off)",
    )
    procedural.add_argument(
        "--edits-per-image",
        type=int,
        default=4,
        help="with --procedural: edits drawn per photo, 0 = all of them (default: 4)",
    )
    procedural.add_argument(
        "--phrasings",
        choices=("train", "composed", "held-out"),
        default="train",
        help="with --procedural: the instruction phrasings drawn from: train (each kind's own), composed (those "
        "in polite frames, with other nouns and slider verbs: pipeline/training/phrasings.py), or the held-out "
        "ones no training row uses (for held-out checks) (default: train)",
    )


def _extension(args: argparse.Namespace, cfg):
    from jobs.arguments import summary_pass_from_args
    from pipeline.summarize import make_dataset_extension

    return make_dataset_extension(summary_pass_from_args(args, cfg), edit=args.edit)


def run(args: argparse.Namespace) -> int:
    if args.procedural:
        return _run_procedural(args)
    from jobs.edit import run_job

    return run_job("make-dataset", args, _extension)


def _run_procedural(args: argparse.Namespace) -> int:
    import json

    from pipeline.training.procedural import ProceduralSettings, make_procedural_dataset

    settings = ProceduralSettings(
        resolution=args.resolution or 256,
        seed=13331 if args.seed is None else args.seed,
        edits_per_image=args.edits_per_image,
        rows_per_shard=args.unit_rows,
        limit=args.limit,
        phrasings=args.phrasings,
    )
    manifest = make_procedural_dataset(args.input, args.output, settings, reach_from_args(args))
    if args.json:
        print(json.dumps(manifest, sort_keys=True))
    else:
        print(f"{manifest['rows']} triplets in {len(manifest['shards'])} shards under {args.output}")
    return 0
