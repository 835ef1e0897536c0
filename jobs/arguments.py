"""Flag groups the jobs share, and the config objects built from the parsed flags.

Each `add_*` function adds one named set of flags to a parser or an argument group, so a flag reads the
same in the --help of every job that takes it; the `*_from_args` function next to it turns those flags into
the object the pipeline takes. `jobs.edit.add_arguments` lays the sets out for the edit plan's jobs (edit,
eval, make-dataset); edit and make-dataset add the summarizer set.

Only argparse is imported at module level: `mgie-batch --help` must not load torch or Ray.
"""

from __future__ import annotations

import argparse

Flags = argparse._ActionsContainer  # a parser or one of its argument groups

# the --resources preset's stage sizes a run may override, one flag each: (flag, type, what it sets)
_PRESET_OVERRIDES = (
    ("--batch-size", int, "rows per diffusion call"),
    ("--express-batch-size", int, "rows per MLLM call"),
    ("--concurrency", int, "actors per model stage"),
    ("--num-gpus", float, "GPUs per model actor; fractions share a GPU"),
)

# the model's sampler settings a run may override (None: the model's own): (flag, type, help)
_SAMPLER_OVERRIDES = (
    ("--steps", int, "diffusion steps (default: the model's sampler config; tiny 4, mgie-7b 100)"),
    ("--guidance-scale", float, "text classifier-free guidance (default: the model's, 7.5)"),
    ("--image-guidance-scale", float, "image classifier-free guidance (default: the model's, 1.5)"),
    (
        "--strength",
        float,
        "where sampling starts: 1 = pure noise (the reference); below 1 the photo's latent noised "
        "that far along the schedule, which keeps a small model near the photo (default: the "
        "model's; mgie-7b 1)",
    ),
    (
        "--detail-reference",
        str,
        "what a full-size output adds the photo's finer detail against: 'input' (the "
        "working-size photo) or 'reconstruction' (its VAE round trip: also cancels the "
        "VAE's blur and colour error; one more VAE pass per row) (default: the model's; "
        "mgie-7b input)",
    ),
    (
        "--resolution",
        int,
        "working resolution in px: the longer side with --resize fit, the square's side with "
        "crop (default: the model's; tiny 32, mgie-7b 512)",
    ),
    (
        "--seed",
        int,
        "run seed; each row's seed is f(run seed, key) unless its json gives 'seed' (default: the "
        "model's sampler seed, 13331)",
    ),
)


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


def add_sampler_arguments(group: Flags) -> None:
    """The sampler settings a run may set instead of the model's own; all part of the run fingerprint."""
    for flag, kind, text in _SAMPLER_OVERRIDES:
        group.add_argument(flag, type=kind, default=None, help=text)
    group.add_argument(
        "--rng",
        default=None,
        choices=["cpu", "reference"],
        help="noise generators: 'cpu', one CPU generator per row (the same pixels on any device "
        "and batch size); 'reference', one per row on the model's device drawn as the "
        "official demo draws them (its pixels with the official weights) (default: the "
        "model's, cpu)",
    )


def add_preset_override_arguments(group: Flags) -> None:
    """The stage sizes a run may set instead of its --resources preset's."""
    for flag, kind, sets in _PRESET_OVERRIDES:
        group.add_argument(flag, type=kind, default=None, help=f"{sets} (default: the --resources preset's)")


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
    from pipeline.storage import storage_options_for
    from pipeline.summarize import SummarizerSpec, SummaryPass

    if cfg.model.kind == "noop":
        raise ValueError("the summarizer pass needs an MGIE model (its MLLM explains each edit); --model noop has none")
    spec = SummarizerSpec(
        source=args.summarizer,
        seed=args.summarizer_seed,
        device=args.device,
        storage_options=storage_options_for(args.summarizer, args.endpoint_url),
    )
    return SummaryPass(cfg.model, spec, args.summarize_batch_size)
