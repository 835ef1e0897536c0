"""`mgie-batch make-dataset`: (image, instruction[, goal]) shards -> IPr2Pr-style training triplets."""

from __future__ import annotations

import argparse

DESCRIPTION = ("Run MGIE's summarizer pass over every row: the MLLM explains what the edited image will be like, "
               "a Flan-T5-class model condenses it to a concise expressive instruction; with --edit MGIE also "
               "edits the image following that instruction. Output shards hold <key>.input.png, <key>.json "
               "(instruction, explanation, summary), <key>.png (edited, with --edit) and the goal if the input "
               "had one. Resumable like `edit`.")


def add_summarizer_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("summarizer (make-dataset, edit --expressive summarize; part of the run fingerprint)")
    g.add_argument("--summarizer", default="tiny",
                   help="summarizer preset with random weights (tiny, flan-t5-xxl) or a T5 / Flan-T5 directory in "
                        "transformers' layout (local or URL) (default: tiny)")
    g.add_argument("--summarizer-seed", type=int, default=0, help="weight seed of a summarizer preset (default: 0)")
    g.add_argument("--summarize-batch-size", type=int, default=None,
                   help="paragraphs per summarizer call (default: half the express batch)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jobs import edit

    edit.add_arguments(parser, expressive=False)
    add_summarizer_arguments(parser)
    # training triplets: the reference's square working images, lossless, at the size the model saw
    parser.set_defaults(resize="crop", output_size="work", image_format="png")
    parser.add_argument("--edit", action="store_true",
                        help="also edit each image following its summary (default: off: text and input only)")


def summary_pass_from_args(args: argparse.Namespace, cfg):
    from pipeline.storage import storage_options_for
    from pipeline.summarize import SummarizerSpec, SummaryPass

    if cfg.model.kind == "noop":
        raise ValueError("the summarizer pass needs an MGIE model (its MLLM explains each edit); --model noop has none")
    spec = SummarizerSpec(source=args.summarizer, seed=args.summarizer_seed, device=args.device,
                          storage_options=storage_options_for(args.summarizer, args.endpoint_url))
    return SummaryPass(cfg.model, spec, args.summarize_batch_size)


def _extension(args: argparse.Namespace, cfg):
    from pipeline.summarize import make_dataset_extension

    return make_dataset_extension(summary_pass_from_args(args, cfg), edit=args.edit)


def run(args: argparse.Namespace) -> int:
    from jobs.edit import run_job

    return run_job("make-dataset", args, _extension)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgie-batch make-dataset", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
