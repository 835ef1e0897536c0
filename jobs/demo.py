"""`mgie-batch demo` (`make demo`): the whole product on one machine, with nothing to set up.

Starts a local S3 endpoint (moto's server on 127.0.0.1, a free port), writes demo shards made from the
photographs bundled with scikit-image, runs `edit` with the shipped mgie-tiny on a local Ray instance, prints
the summary and the status view, copies the outputs (with copies of the inputs) to a local folder, stops the
endpoint, and writes an HTML report and a before/after contact sheet next to the outputs.

mgie-tiny is a 64 px MGIE trained here on 12 global edits (docs/training.md): it really edits tone and colour,
and nothing else. Everything around it (streaming, ledger, commits, resume) is the real thing; run
`mgie-batch edit --model PATH` with converted MGIE weights for open-ended edits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

DESCRIPTION = (
    "Run the edit job end to end on this machine: local S3 endpoint, demo shards from bundled "
    "photos, local Ray, the shipped mgie-tiny; prints the summary and where the outputs, the report "
    "and the contact sheet are."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=int, default=2, help="demo input shards (default: 2)")
    parser.add_argument("--rows-per-shard", type=int, default=8, help="rows per demo shard (default: 8)")
    parser.add_argument("--unit-rows", type=int, default=4, help="rows per output unit (default: 4)")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's; mgie-tiny 20)")
    parser.add_argument(
        "--model",
        default="mgie-tiny",
        help="model to run (default: mgie-tiny, trained here; 'tiny' random weights, 'noop' no model)",
    )
    parser.add_argument("--photo-size", type=int, default=256, help="longest side of the demo photos (default: 256)")
    parser.add_argument(
        "--copy-to",
        default="demo-output",
        help="local folder the outputs are copied to before the endpoint stops (default: demo-output)",
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")


def run(args: argparse.Namespace) -> int:
    # a private local Ray: the endpoint lives on 127.0.0.1, which a remote cluster could not reach
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import fsspec
    import ray

    from jobs.edit import format_summary
    from pipeline import terminal
    from pipeline.config import EditConfig
    from pipeline.dev.demo_data import write_demo_shards
    from pipeline.dev.local_s3 import local_s3
    from pipeline.editors import ModelSpec
    from pipeline.layout import OutputLayout
    from pipeline.reporting.contact_sheet import write_contact_sheet
    from pipeline.reporting.report import write_report
    from pipeline.reporting.status import format_status, output_status
    from pipeline.run import run_edit

    bucket = "mgie-demo"
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    with local_s3((bucket,)) as s3:
        os.environ.update(s3.env())  # before Ray starts, so that every Ray worker inherits the endpoint too
        print(f"[demo] local S3 endpoint {s3.url} (bucket {bucket})", flush=True)
        shards = write_demo_shards(f"s3://{bucket}/input", args.shards, args.rows_per_shard, size=args.photo_size)
        print(
            f"[demo] wrote {len(shards)} input shards from scikit-image's bundled photos: "
            f"s3://{bucket}/input/demo-{{000..{len(shards) - 1:03d}}}.tar",
            flush=True,
        )
        try:
            # as `mgie-batch edit` shows it: status lines and one bar; Ray's and the libraries' log lines go to
            # the log file named on the first line
            with terminal.session("demo"):
                ray.init(
                    num_cpus=args.num_cpus,
                    include_dashboard=False,
                    _temp_dir=ray_dir,
                    configure_logging=False,
                    log_to_driver=False,
                )
                output = f"s3://{bucket}/output/run1"
                cfg = EditConfig.of(
                    input=f"s3://{bucket}/input/demo-{{000..{len(shards) - 1:03d}}}.tar",
                    output=output,
                    model=ModelSpec(args.model),
                    steps=args.steps,
                    unit_rows=args.unit_rows,
                    copy_input=True,
                )
                print(
                    f"[demo] mgie-batch edit --input {cfg.io.input} --output {output} --model {args.model} "
                    f"--unit-rows {args.unit_rows} --copy-input",
                    flush=True,
                )
                summary = run_edit(cfg)
            print("\n" + format_summary(summary))
            print("\n[demo] mgie-batch status " + output)
            print(format_status(output_status(output)))
            target = os.path.abspath(args.copy_to)
            shutil.rmtree(target, ignore_errors=True)
            fs = fsspec.filesystem("s3")
            fs.get(f"{bucket}/output/run1/", target + "/", recursive=True)
        finally:
            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)
    out = OutputLayout(target)
    shards, ledgers = out.url(out.shard("*")), out.url(out.ledger("*"))
    report, sheet = os.path.join(target, "report.html"), os.path.join(target, "contact-sheet.png")
    write_report(target, report)
    drawn = write_contact_sheet(target, sheet, title=f"mgie-batch demo: --model {args.model}, input | output")
    print(f"\n[demo] outputs copied to {target}/ (the endpoint is stopped now):")
    listing = [
        (shards, "edited images <key>.jpg (the inputs' size and format), <key>.input.jpg, <key>.json"),
        (
            ledgers,
            'one row per input row (python -c "import pyarrow.parquet as pq; '
            f"print(pq.read_table('{ledgers.rsplit('/', 1)[0]}').to_pandas())\")",
        ),
        (out.url(out.SUMMARY), f"counts of the run; {out.RUN_RECORD}: its configuration"),
        (report, f"the HTML report (mgie-batch report {target} --html r.html makes it again)"),
    ] + ([(sheet, f"before/after contact sheet, {drawn} rows")] if drawn else [])
    width = max(len(path) for path, _ in listing)
    for path, what in listing:
        print(f"  {path:<{width}}   {what}")
    print(f"[demo] {model_note(args.model)}")
    return 0


MODEL_NOTES = {
    "tiny": "the tiny model has random weights: its pixels and expressive instructions are noise.",
    "noop": "the noop model runs no model: the outputs are the inputs.",
}


def model_note(model: str) -> str:
    """What the demo's model is; for mgie-tiny, the kinds its own eval.json says it passes."""
    if model != "mgie-tiny":
        return MODEL_NOTES.get(model, f"model {model}")
    from mgie.shipped import shipped_passes

    passed = shipped_passes(model)
    return (
        "mgie-tiny is a 64 px MGIE trained here on 12 global edits (tone, colour, blur, sharpen; "
        "docs/training.md): it knows those edits and nothing else, and on held-out photos and wordings "
        f"it passes the check of {len(passed)} kind{'s' if len(passed) != 1 else ''} ({', '.join(passed) or 'none'}). "
        "For open-ended edits convert MGIE's weights (mgie-batch convert) and pass --model PATH."
    )
