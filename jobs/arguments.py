"""Flag groups the jobs share, and the config objects built from the parsed flags.

The edit plan's own settings are declared in their config groups (pipeline.config) and their flags derived
from them (`jobs.edit.add_arguments`). Here are the sets whose flags are not one field each: the manifest
source options (one flag sets two fields) and the summarizer pass; the `*_from_args` function next to each
turns its flags into the object the pipeline takes.

Only argparse is imported at module level: `mgie-batch --help` must not load torch or Ray.
"""

from __future__ import annotations

import argparse

Flags = argparse._ActionsContainer  # a parser or one of its argument groups


def add_reach_flag(group: Flags) -> None:
    """--endpoint-url, as the edit plan declares it (pipeline.config.IOSettings), for every job that reads or
    writes stores."""
    from pipeline.config import IOSettings
    from pipeline.settings import add_flags

    add_flags(group, IOSettings, names=("endpoint_url",))


def reach_from_args(args: argparse.Namespace):
    """How the job's stores are reached (pipeline.location.Reach), from --endpoint-url."""
    from pipeline.location import Reach

    return Reach.of(args.endpoint_url)


def _first_of(names: tuple[str, ...]) -> str:
    """`('url', 'image')` -> "'url', else 'image'": the first of these columns a manifest has."""
    return ", else ".join(f"'{n}'" for n in names)


def add_source_arguments(group: Flags) -> None:
    """How manifest rows become samples (`SourceOptions`): which column holds what, and the fetch timeout."""
    from pipeline.sources import IMAGE_COLUMNS, INSTRUCTION_COLUMNS, KEY_COLUMN

    columns = (  # (flag, what the column holds, which column is used without the flag)
        (
            "--image-column",
            "the image: a URL or path (relative to the manifest), bytes, or an HF datasets image struct",
            _first_of(IMAGE_COLUMNS),
        ),
        ("--instruction-column", "the instruction", _first_of(INSTRUCTION_COLUMNS)),
        ("--key-column", "the row key", f"'{KEY_COLUMN}' if present, else the row number"),
    )
    for flag, holds, fallback in columns:
        group.add_argument(flag, default=None, help=f"manifest column with {holds} (default: {fallback})")
    group.add_argument(
        "--fetch-timeout",
        type=float,
        default=30.0,
        help="seconds per image request of a manifest or folder; failed requests are retried 3 "
        "times, then the row is an error row (default: 30)",
    )
    group.add_argument(
        "--fetch-deadline",
        type=_positive_seconds,
        default=120.0,
        help="seconds per image in all, retries and redirects included; past it the row is an error row (default: 120)",
    )
    group.add_argument(
        "--allow-private-urls",
        nargs="?",
        const="all",
        default=None,
        type=_url_networks,
        metavar="CIDR[,CIDR]",
        help="let manifest URLs reach loopback, link-local, private and other non-public "
        "addresses: all of them, or only the networks given (an internal image host). "
        "Without it such a row is an error row: a dataset's URLs must not reach the cloud "
        "metadata address or the cluster's own services (default: off)",
    )


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _url_networks(text: str) -> tuple[str, ...]:
    """'all' -> ('all',); '10.2.0.0/16,127.0.0.1' -> the networks, each checked before any work starts."""
    import ipaddress

    if text == "all":
        return ("all",)
    nets = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in nets:
        try:
            ipaddress.ip_network(n, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{n!r} is not a network (e.g. 10.2.0.0/16 or 127.0.0.1)") from None
    if not nets:
        raise argparse.ArgumentTypeError("give networks as CIDR[,CIDR], or the flag alone for all")
    return nets


def source_options_from_args(args: argparse.Namespace):
    from pipeline.sources import SourceOptions

    allowed = args.allow_private_urls or ()
    return SourceOptions(
        image_column=args.image_column,
        instruction_column=args.instruction_column,
        key_column=args.key_column,
        fetch_timeout_s=args.fetch_timeout,
        fetch_deadline_s=args.fetch_deadline,
        allow_private_urls=allowed == ("all",),
        allowed_networks=() if allowed == ("all",) else allowed,
    )


# Laid out line for line like make-dataset's --procedural group (a group, a flag with a long help): the same
# shape, different flags, nothing to share.
def add_summarizer_arguments(parser: argparse.ArgumentParser) -> None:
    """The summarizer pass (`make-dataset`, `edit --expressive summarize`)."""
    g = parser.add_argument_group("summarizer (make-dataset, edit --expressive summarize; part of the run fingerprint)")
    g.add_argument(
        "--summarizer",
        default="tiny",
        help="summarizer preset with random weights (tiny, flan-t5-xxl, "
        "flan-t5-11b-summarizer-filtered: the sizes of the reference's "
        "jordiclive/flan-t5-11b-summarizer-filtered, run in bf16) or a T5 / Flan-T5 directory in "
        "transformers' layout (local or URL), e.g. that model's own (default: tiny)",
    )
    g.add_argument("--summarizer-seed", type=int, default=0, help="weight seed of a summarizer preset (default: 0)")
    g.add_argument(
        "--summarize-batch-size",
        type=int,
        default=None,
        help="paragraphs per summarizer call (default: half the express batch)",
    )


def summary_pass_from_args(args: argparse.Namespace, cfg):
    """The summarizer pass of a run whose config is `cfg` (its model explains each edit)."""
    from pipeline.summarize import SummarizerSpec, SummaryPass

    if cfg.model.kind == "noop":
        raise ValueError("the summarizer pass needs an MGIE model (its MLLM explains each edit); --model noop has none")
    spec = SummarizerSpec(
        source=args.summarizer,
        seed=args.summarizer_seed,
        device=args.model_device,
        storage_options=reach_from_args(args).at(args.summarizer).options,
    )
    return SummaryPass(cfg.model, spec, args.summarize_batch_size)
