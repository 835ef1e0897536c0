"""`mgie-batch edit`: shards, manifests or image folders in, edited shards + a per-row ledger out, exactly once."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from jobs.arguments import (
    add_reach_flag,
    add_source_arguments,
    add_summarizer_arguments,
    source_options_from_args,
    summary_pass_from_args,
)

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
    """The edit plan's flags, derived from the config groups (pipeline.config) in their --help groups.
    `expressive=False`: the jobs that build on these flags but always summarize (make-dataset);
    `output_defaults`: a job's own defaults of output settings by name (eval and make-dataset: crop, work,
    png), set before the help is built so that --help shows what the job uses."""
    from pipeline.config import IOSettings, ResourceSettings, RunSettings, SamplingSettings
    from pipeline.editors import ModelSpec
    from pipeline.layout import OutputLayout
    from pipeline.outputs import OutputSettings
    from pipeline.quality import QAChecks
    from pipeline.quarantine import QuarantineSettings
    from pipeline.settings import add_flags

    io = parser.add_argument_group("input and output", f"--output holds {OutputLayout().describe()}")
    add_flags(io, IOSettings, names=("input", "output"))
    add_reach_flag(io)
    add_source_arguments(io)
    add_flags(io, IOSettings, names=("limit", "retry_errors"))

    model = parser.add_argument_group("model and sampling (part of the run fingerprint)")
    add_flags(model, ModelSpec, {"source": "mgie-tiny"}, ("source", "seed", "scheduler"), prefix="model_")
    add_flags(model, SamplingSettings)

    out = parser.add_argument_group("output images (part of the run fingerprint)")
    add_flags(out, OutputSettings, defaults=output_defaults)
    add_flags(out, QAChecks)

    run = parser.add_argument_group("resources")
    add_flags(run, ResourceSettings)
    add_flags(run, ModelSpec, names=("compile", "compile_cache", "device", "dtype"), prefix="model_")
    add_flags(run, RunSettings, names=("lease_timeout_s",))
    add_flags(run, QuarantineSettings)
    add_flags(run, RunSettings, names=("progress",))
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


def config_from_args(args: argparse.Namespace):
    """The run config from the parsed flags: each group from its own flags (pipeline.settings.from_args)."""
    from pipeline.config import EditConfig, IOSettings, ResourceSettings, RunSettings, SamplingSettings
    from pipeline.editors import ModelSpec
    from pipeline.outputs import OutputSettings
    from pipeline.quality import QAChecks
    from pipeline.quarantine import QuarantineSettings
    from pipeline.settings import from_args

    return EditConfig(
        io=from_args(IOSettings, args),
        model=from_args(ModelSpec, args, prefix="model_"),  # its store's options: EditConfig resolves them
        sampling=from_args(SamplingSettings, args),
        outputs=from_args(OutputSettings, args),
        qa=from_args(QAChecks, args),
        source=source_options_from_args(args),
        compute=from_args(ResourceSettings, args),
        run=from_args(RunSettings, args),
        quarantine=from_args(QuarantineSettings, args),
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
