"""`mgie-batch edit`: shards, manifests or image folders in, edited shards + a per-row ledger out, exactly once."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from jobs.arguments import (
    add_preset_override_arguments,
    add_sampler_arguments,
    add_source_arguments,
    add_summarizer_arguments,
    source_options_from_args,
    summary_pass_from_args,
)
from pipeline.quarantine import DEFAULT_DEATHS_ALLOWED, QuarantineSettings

DESCRIPTION = (
    "Edit every row of WebDataset shards, manifests (Parquet, CSV, JSONL) or folders of images with "
    "MGIE on Ray Data; write edited images, expressive instructions and a per-row ledger under OUTPUT, "
    "exactly once. Rerun the same command after any crash to finish the rest."
)
EPILOG = (
    "exit status: 0 the run finished (some rows may be error rows: the summary counts them); 2 refused or "
    "stopped: a bad setting, a missing or rewritten input shard, another run's configuration or another "
    "driver on OUTPUT (what is committed stays valid; fix it and run the same command again); 3 the output "
    "store refused a write; 4 the run finished but every row it processed failed; 1 a fault of the job "
    "itself, not of its settings (one line naming the log file that holds the traceback)."
)
EXIT_ALL_ROWS_FAILED = 4


def add_arguments(
    parser: argparse.ArgumentParser, expressive: bool = True, output_defaults: dict[str, Any] | None = None
) -> None:
    """`expressive=False`: the jobs that build on these flags but always summarize (make-dataset);
    `output_defaults`: a job's own defaults of the output image flags (add_output_arguments)."""
    from pipeline.config import RESOURCE_PRESETS
    from pipeline.editors import SCHEDULER_NAMES
    from pipeline.layout import OutputLayout

    io = parser.add_argument_group("input and output")
    io.add_argument(
        "--input",
        required=True,
        action="append",
        help="what to edit: WebDataset .tar shards, a manifest (.parquet, .csv, .jsonl: an image "
        "column of URLs, paths or bytes and an instruction column) or a folder of images "
        "(*.jpg|jpeg|png|webp with sibling .txt/.json instructions); local, file://, s3://, "
        "http(s):// or any fsspec URL; brace patterns ('shard-{000..099}.tar'), globs, folders. "
        "Repeat --input for several (a path with spaces stays one path), or give @LIST_FILE "
        "with one per line",
    )
    io.add_argument("--output", required=True, help=f"output prefix (local folder or URL): {OutputLayout().describe()}")
    io.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint for s3:// URLs, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL, else AWS S3)",
    )
    add_source_arguments(io)
    io.add_argument(
        "--limit",
        type=int,
        default=None,
        help="stop after about this many new rows, rounded up to whole units (default: no limit)",
    )
    io.add_argument(
        "--retry-errors",
        action="store_true",
        help="reprocess only the error rows of already committed units; ok rows stay as they are (default: off)",
    )

    model = parser.add_argument_group("model and sampling (part of the run fingerprint)")
    model.add_argument(
        "--model",
        default="mgie-tiny",
        help="the shipped mgie-tiny (a 64 px MGIE trained here on 12 global edits: tone, colour, blur, "
        "sharpen), a checkpoint directory or URL written by `mgie-batch convert` or `train`, a "
        "preset with random weights (tiny, mgie-tiny-init, mgie-7b), or 'noop' (no model: measures "
        "pipeline overhead) (default: mgie-tiny)",
    )
    model.add_argument("--model-seed", type=int, default=0, help="weight seed of a preset model (default: 0)")
    model.add_argument(
        "--instruction",
        default=None,
        help="one instruction for every row (catalogue retouching); default: each row's own "
        "(txt field, else json 'instruction')",
    )
    model.add_argument(
        "--scheduler",
        default=None,
        choices=SCHEDULER_NAMES,
        help="diffusion scheduler instead of the model's own (default: the model's, "
        "euler_ancestral as in the reference)",
    )
    add_sampler_arguments(model)
    model.add_argument(
        "--unit-rows",
        type=int,
        default=64,
        help="input rows per unit of output (one tar, one ledger file, one commit) (default: 64)",
    )

    add_output_arguments(parser, output_defaults)

    run = parser.add_argument_group("resources")
    run.add_argument(
        "--resources",
        default="auto",
        choices=["auto", *RESOURCE_PRESETS],
        help="stage sizes (batch, actors, GPUs/CPUs per actor); auto = 'cpu' without GPUs, else "
        "'24gb-per-gpu' times the GPUs; see docs/deploy.md (default: auto)",
    )
    run.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "split", "fused"],
        help="model actors: 'split', an MLLM pool and a diffusion pool sharing GPUs; 'fused', one "
        "actor per GPU holding both, the next unit's MLLM overlapping this unit's diffusion; "
        "auto = fused with GPUs, split without (default: auto)",
    )
    add_preset_override_arguments(run)
    run.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="torch.compile the diffusion UNet: auto = on CUDA only (default: auto)",
    )
    run.add_argument(
        "--compile-cache",
        default=None,
        help="folder of compiled kernels reused across runs (default: ~/.cache/mgie-batch/compile)",
    )
    run.add_argument("--device", default="auto", help="model device: auto, cpu, cuda (default: auto)")
    run.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="model precision (default: auto = float16 on cuda, float32 on cpu)",
    )
    run.add_argument(
        "--lease-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help=f"one driver per output: a driver holds OUTPUT/{OutputLayout.LEASE} and refreshes it while "
        "it runs; "
        "another driver may take the output over once the lease's heartbeat is this old, or "
        "at once when it names a process on this host that is gone (default: 300)",
    )
    run.add_argument(
        "--unit-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds one stage may spend on a unit (on one row, in a quarantined unit); past it the worker is "
        "killed and counted as a crash. 0 = auto: 900 + 3 per row per 20 steps (default: 0)",
    )
    run.add_argument(
        "--quarantine-after",
        type=int,
        default=DEFAULT_DEATHS_ALLOWED,
        metavar="N",
        help="worker deaths (crash, out of memory, --unit-timeout) on one unit before its rows are redone one "
        "at a time and the row that kills the worker becomes an error row (default: "
        f"{DEFAULT_DEATHS_ALLOWED})",
    )
    run.add_argument("--no-progress", action="store_true", help="no live progress line (default: shown)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON (default: text)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (sources, rows, rows already done, actor layout, GPU memory for weights) "
        "and stop: nothing is started, written or deleted (default: off)",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's, the workers' and the libraries' log lines here instead of in the log file "
        "named on the first status line (default: off)",
    )

    if expressive:
        parser.add_argument(
            "--expressive",
            default="mllm",
            choices=["mllm", "summarize"],
            help="where the expressive instruction comes from: 'mllm', MGIE's own generation; "
            "'summarize', the summarizer pass (the MLLM explains the edit, a Flan-T5-class "
            "model condenses it, the edit follows the summary) (default: mllm)",
        )
        add_summarizer_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """`defaults` of `resize`, `output_size` and `image_format` for a job that differs from edit (eval and
    make-dataset: crop, work, png): set here, before the help is built, so that --help shows what the job
    uses."""
    # flag declarations share their layout with the run group above line by line: different flags, nothing
    # to fold (a table of flags would only move the same lines into a list)
    d = {"resize": "fit", "output_size": "original", "image_format": None, **(defaults or {})}
    image_format = d["image_format"] or "the input's: JPEG in, JPEG out"
    out = parser.add_argument_group("output images (part of the run fingerprint)")
    out.add_argument(
        "--resize",
        default=d["resize"],
        choices=["fit", "crop", "reference"],
        help="the working image the model edits: 'fit', the whole picture, aspect ratio kept, longer "
        "side = --resolution, sides multiples of 8 (the VAE's factor; the UNet pads its own "
        "levels, so 8 suffices); 'crop', the reference's centre square at --resolution; "
        "'reference', the raw image with each side floored to a multiple of 8, refused above "
        f"--max-pixels (default: {d['resize']})",
    )
    out.add_argument(
        "--max-pixels",
        type=int,
        default=1024 * 1024,
        help="--resize reference: a working image with more pixels is an error row (default: 1048576)",
    )
    out.add_argument(
        "--max-output-pixels",
        type=int,
        default=0,
        metavar="N",
        help="--output-size original: a photo with more pixels is an error row, refused before it is decoded, "
        "so one huge photo cannot take a write task's memory (0 = no limit) (default: 0)",
    )
    out.add_argument(
        "--output-size",
        default=d["output_size"],
        choices=["original", "work"],
        help="'original': the edit carried to the input's own size and orientation, fine detail "
        "kept (with --resize crop, the centre square at its own size); 'work': the working "
        f"image as the model made it (default: {d['output_size']})",
    )
    out.add_argument(
        "--image-format",
        default=d["image_format"],
        choices=["jpg", "png", "webp"],
        help=f"output file format, members <key>.<ext> (default: {image_format})",
    )
    out.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality 1-100 (default: 95)")
    out.add_argument(
        "--strip-metadata",
        action="store_true",
        help="drop EXIF from the outputs; ICC profiles stay, they define the colours (default: EXIF "
        "kept, orientation reset to 1 since the pixels are upright)",
    )
    out.add_argument(
        "--copy-input",
        action="store_true",
        help="also write <key>.input.<ext> (parquet: an input_image column), the input at the "
        "output's size and format (default: off)",
    )
    out.add_argument(
        "--output-format",
        default="webdataset",
        choices=["webdataset", "parquet"],
        help="'webdataset': per unit a tar of <key>.<ext> + <key>.json and a Parquet ledger; "
        "'parquet': per unit one Parquet file of every row, the ledger columns plus the image "
        "bytes (columns image, image_format, sample_json), loadable as it is by DuckDB, Spark "
        "and HF datasets (default: webdataset)",
    )
    out.add_argument(
        "--qa-min-change",
        type=float,
        default=None,
        help="auto-QA: an ok row whose mean change from its input (8-bit levels, at the working "
        "size) is below this gets qa_pass false, a likely no-op edit; its status stays ok "
        "(default: no bound; qa_change and qa_ssim are always recorded)",
    )
    out.add_argument(
        "--qa-max-change",
        type=float,
        default=None,
        help="auto-QA: above this mean change qa_pass is false, the picture was likely replaced "
        "rather than edited (default: no bound)",
    )
    out.add_argument(
        "--qa-clip",
        default=None,
        metavar="PATH",
        help="auto-QA with CLIP: a local or fsspec folder holding a transformers CLIPModel with its "
        "tokenizer (never downloaded); records qa_clip_t (edit vs expressive instruction) and "
        "qa_clip_dir (InstructPix2Pix's directional similarity) per ok row; the weights' hash "
        "joins the run fingerprint (default: none, the two columns stay null)",
    )
    out.add_argument(
        "--qa-min-clip-dir",
        type=float,
        default=None,
        help="auto-QA: below this CLIP directional similarity qa_pass is false, the edit did not go "
        "where the instruction points; needs --qa-clip (default: no bound)",
    )


def config_from_args(args: argparse.Namespace):
    from pipeline.config import EditConfig
    from pipeline.editors import ModelSpec
    from pipeline.storage import storage_options_for

    model = ModelSpec(
        source=args.model,
        seed=args.model_seed,
        device=args.device,
        dtype=args.dtype,
        storage_options=storage_options_for(args.model, args.endpoint_url),
        compile=args.compile,
        compile_cache=args.compile_cache or "",
        scheduler=getattr(args, "scheduler", None) or "",
    )
    # one --input keeps the old meaning of a single string (split on spaces unless it names one path)
    inputs = args.input[0] if isinstance(args.input, list) and len(args.input) == 1 else tuple(args.input)
    source = source_options_from_args(args)
    return EditConfig(
        input=inputs,
        output=args.output,
        model=model,
        instruction=args.instruction,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
        strength=args.strength,
        detail_reference=args.detail_reference,
        resolution=args.resolution,
        seed=args.seed,
        unit_rows=args.unit_rows,
        limit=args.limit,
        retry_errors=args.retry_errors,
        resources=args.resources,
        endpoint_url=args.endpoint_url,
        progress=not args.no_progress,
        rng=args.rng,
        layout=args.layout,
        batch_size=args.batch_size,
        express_batch_size=args.express_batch_size,
        lease_timeout_s=args.lease_timeout,
        source=source,
        concurrency=args.concurrency,
        num_gpus=args.num_gpus,
        resize=args.resize,
        max_pixels=args.max_pixels,
        max_output_pixels=args.max_output_pixels,
        output_size=args.output_size,
        image_format=args.image_format,
        quality=args.quality,
        strip_metadata=args.strip_metadata,
        copy_input=args.copy_input,
        qa_min_change=args.qa_min_change,
        qa_max_change=args.qa_max_change,
        qa_clip=args.qa_clip,
        qa_min_clip_dir=args.qa_min_clip_dir,
        output_format=args.output_format,
        quarantine=QuarantineSettings(args.quarantine_after, args.unit_timeout),
    )


def format_summary(summary: dict) -> str:
    lines = [
        f"output     {summary['output']}",
        f"rows read  {summary['read']} = ok {summary['ok']} + error {summary['error']} + "
        f"skipped (already done) {summary['skipped']}",
        f"units      {summary['units_committed']} committed, {summary['units_skipped']} already committed",
        f"time       {summary['seconds']:.1f} s, {summary['rows_per_second'] or 0:.2f} rows/s",
        f"ledger     {summary['ledger_totals']['rows']} rows in total "
        f"(ok {summary['ledger_totals']['ok']}, error {summary['ledger_totals']['error']})",
    ]
    if summary["errors_by_kind"]:
        lines.append("errors     " + ", ".join(f"{k} x{v}" for k, v in summary["errors_by_kind"].items()))
        if summary["ok"]:
            lines.append(
                f"           {summary['error']} of {summary['ok'] + summary['error']} rows failed (exit "
                f"status 0: errors are data); `--retry-errors` redoes only them"
            )
    if not summary["complete"]:
        lines.append("stopped at --limit; run the same command without it to finish")
    for shard in summary.get("incomplete_shards", []):
        lines.append(
            f"incomplete {shard}: unreadable past some row (cut short?); its readable rows are in, "
            f"run the same command again once the whole file is there"
        )
    return "\n".join(lines)


def run_job(
    command: str,
    args: argparse.Namespace,
    extension: Callable[..., Any] | None = None,
    report: Callable[[dict], str] = format_summary,
) -> int:
    """Runs the edit plan for `mgie-batch <command>`: the run config from `args`, `extension(args, cfg)` (a
    `RunExtension` or None) on top of it, and the summary as text (`report`) or JSON. Every job on the plan
    answers the same way: a refusal (pipeline.refusals) with one line on stderr and exit status 2; a store
    that refused a write with 3; anything else, a bug, with one line naming the log file that holds its
    traceback and exit status 1.
    """
    import logging

    from pipeline import refusals, terminal
    from pipeline.storage import OutputStoreFull

    dry_run = getattr(args, "dry_run", False)  # writes nothing, not even its log into the output
    log_path = None
    try:
        # status lines from the first second, then one bar; Ray's, the workers' and the libraries' log lines go
        # to a log file (--verbose: here). The session ends before anything below prints, bar closed.
        log_next_to = None if dry_run else args.output
        with terminal.session(command, output=log_next_to, verbose=getattr(args, "verbose", False)) as session:
            log_path = session.log_path
            try:
                from pipeline.run import run_edit

                with refusals.checking():  # the flags and the extension's own settings
                    cfg = config_from_args(args)
                    ext = extension(args, cfg) if extension else None
                if dry_run:
                    from pipeline.dry_run import format_plan, make_plan

                    with refusals.checking():  # a dry run is all checks
                        plan = make_plan(cfg, extension=ext)
                else:
                    summary = run_edit(cfg, ext)
            except Exception as e:
                if refusals.refusal_of(e) is None and not isinstance(e, (OutputStoreFull, PermissionError)):
                    # into the session's log file (--verbose: onto the terminal) before the session closes
                    logging.getLogger("mgie_batch").exception(f"mgie-batch {command} failed")
                raise
    except Exception as e:  # noqa: BLE001 - every exit is one line; a bug's traceback is in the log file
        refusal = refusals.refusal_of(e)
        if refusal is not None:
            print(f"mgie-batch {command}: {refusals.message(refusal, from_task=refusal is not e)}", file=sys.stderr)
            return 2
        if not isinstance(e, (OutputStoreFull, PermissionError)):
            where = f"the traceback is in {log_path}" if log_path else "the traceback is above"
            line = (str(e).strip().splitlines() or [""])[0][:300]  # a task's error: its message is its traceback
            print(
                f"mgie-batch {command}: failed ({type(e).__name__}: {line}); not a setting to fix but a fault of "
                f"the job: {where}",
                file=sys.stderr,
            )
            return 1
        return _store_refused(command, e)
    if dry_run:
        print(json.dumps(plan.to_dict(), indent=2, sort_keys=True) if args.json else format_plan(plan))
        return 0
    print(json.dumps(summary, indent=2, sort_keys=True) if args.json else report(summary))
    if summary["error"] and not summary["ok"]:  # a run that made nothing: scripts and schedulers must notice
        print(
            f"mgie-batch {command}: every row this run processed failed ({summary['error']} error rows); see "
            f"`mgie-batch status {summary['output']}` for the reasons",
            file=sys.stderr,
        )
        return EXIT_ALL_ROWS_FAILED
    return 0


def _store_refused(command: str, e: OSError) -> int:
    """Exit status 3: the output store is full or refused a write (in the driver or in a stage)."""
    from pipeline.storage import OutputStoreFull

    if isinstance(e, OutputStoreFull):  # before PermissionError/OSError: the disk or quota of the output is full
        print(
            f"mgie-batch {command}: the output store is full: {e}. Units committed so far stay valid and "
            f"nothing half-written is left; free space and run the same command again.",
            file=sys.stderr,
        )
        return 3
    detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    print(
        f"mgie-batch {command}: the output store refused a write: {detail}\nUnits committed so far stay "
        f"valid and nothing half-written is visible; fix the store's permissions and run the same command "
        f"again.",
        file=sys.stderr,
    )
    return 3


def _expressive_extension(args: argparse.Namespace, cfg):
    """`--expressive summarize`: the summarizer pass before the edit; None for MGIE's own generation."""
    if getattr(args, "expressive", "mllm") != "summarize":
        return None
    from pipeline.summarize import summarize_edit_extension

    return summarize_edit_extension(summary_pass_from_args(args, cfg))


def run(args: argparse.Namespace) -> int:
    return run_job("edit", args, _expressive_extension)
