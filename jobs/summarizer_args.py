"""The summarizer pass's flags, shared by `edit --expressive summarize` and `make-dataset`."""

from __future__ import annotations

import argparse


def add_summarizer_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("summarizer (make-dataset, edit --expressive summarize; part of the run fingerprint)")
    g.add_argument("--summarizer", default="tiny",
                   help="summarizer preset with random weights (tiny, flan-t5-xxl, "
                        "flan-t5-11b-summarizer-filtered: the sizes of the reference's "
                        "jordiclive/flan-t5-11b-summarizer-filtered, run in bf16) or a T5 / Flan-T5 directory in "
                        "transformers' layout (local or URL), e.g. that model's own (default: tiny)")
    g.add_argument("--summarizer-seed", type=int, default=0, help="weight seed of a summarizer preset (default: 0)")
    g.add_argument("--summarize-batch-size", type=int, default=None,
                   help="paragraphs per summarizer call (default: half the express batch)")



def summary_pass_from_args(args: argparse.Namespace, cfg):
    from pipeline.storage import storage_options_for
    from pipeline.summarize import SummarizerSpec, SummaryPass

    if cfg.model.kind == "noop":
        raise ValueError("the summarizer pass needs an MGIE model (its MLLM explains each edit); --model noop has none")
    spec = SummarizerSpec(source=args.summarizer, seed=args.summarizer_seed, device=args.device,
                          storage_options=storage_options_for(args.summarizer, args.endpoint_url))
    return SummaryPass(cfg.model, spec, args.summarize_batch_size)
