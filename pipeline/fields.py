"""The row fields of the output, in one table: the ledger's Parquet schema, the per-sample JSON written
next to each image, the HTML report's columns and the counts `mgie-batch status` shows all come from it.

    Field("seed", "int64", "the row's diffusion seed", sample_json=True, report="seed")

A field is a ledger column unless `ledger=False` (the JSON-only keys: sampler settings, the input's own
JSON, ...). Values come from the sample dict under the field's name unless the write stage sets them
(pipeline/write_stage.py `ledger_row`): a new field whose value a stage leaves in the sample under the same
name needs only its line here. Jobs that add columns (eval's metrics, the summarizer pass) add fields of
their own (`SUMMARY_FIELDS`, `metric_field`) that the write stage appends after these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # pyarrow type factory: "string", "int64", "float64", "bool_", "binary"; "json" for JSON-only keys
    description: str
    sample_json: bool = False  # a key of the per-sample JSON next to each image
    report: str = ""  # its label in the HTML report's row data ("": not in the report)
    counts: tuple[tuple[str, Any], ...] = ()  # status counts of this column: (count name, the value counted)
    ledger: bool = True  # a ledger column (False: a key of the sample JSON only)

    def arrow(self):
        import pyarrow as pa

        return pa.field(self.name, getattr(pa, self.type)())


_SIZE = "size in px of the {} ({}); null where the row did not get that far"

LEDGER_FIELDS: tuple[Field, ...] = (
    Field("key", "string", "the sample's key in its source", sample_json=True, report="key"),
    Field("source_shard", "string", "the source's full URL", sample_json=True, report="shard"),
    Field("status", "string", "ok | error", report="status", counts=(("ok", "ok"), ("error", "error"))),
    Field(
        "error_stage", "string", "the stage that failed the row (read, decode, validate, express, ...)", report="stage"
    ),
    Field("error", "string", "what was wrong, with the numbers", report="error"),
    Field("instruction", "string", "the instruction the row was edited with", sample_json=True, report="instruction"),
    Field(
        "expressive_instruction",
        "string",
        "MGIE's expressive instruction (or the summarizer's)",
        sample_json=True,
        report="expressive",
    ),
    Field("seed", "int64", "the row's diffusion seed", sample_json=True, report="seed"),
    Field(
        "output_shard", "string", "the file (relative to OUTPUT) holding the row's output image; null for an error row"
    ),
    Field("run_fingerprint", "string", "the run identity's hash", sample_json=True),
    Field("ms_decode", "float64", "decode time per row, ms"),
    Field("ms_express", "float64", "MLLM + edit head time per row, ms"),
    Field("ms_edit", "float64", "diffusion time per row, ms"),
    Field("ms_encode", "float64", "encode time per row, ms"),
    Field("row_index", "int64", "position in the source: orders and identifies duplicate keys", sample_json=True),
    Field("unit", "string", "the committed unit holding the row"),
    Field("input_width", "int64", _SIZE.format("upright input", "width")),
    Field("input_height", "int64", _SIZE.format("upright input", "height")),
    Field("work_width", "int64", _SIZE.format("working image the model edited", "width")),
    Field("work_height", "int64", _SIZE.format("working image the model edited", "height")),
    Field("output_width", "int64", _SIZE.format("image written", "width")),
    Field("output_height", "int64", _SIZE.format("image written", "height")),
    Field("resize", "string", "the working image's policy: fit | crop | reference"),
    Field("output_sha256", "string", "sha256 of the edited image's bytes as written"),
    Field("output_member", "string", "the edited image's name in the unit, <key>.<ext>"),
    Field("qa_change", "float64", "auto-QA: mean absolute change from the input at the working size, 8-bit levels"),
    Field("qa_ssim", "float64", "auto-QA: SSIM of the luma to the input at the working size"),
    Field("qa_clip_t", "float64", "auto-QA: CLIP similarity of the edit to the expressive instruction (--qa-clip)"),
    Field("qa_clip_dir", "float64", "auto-QA: CLIP directional similarity, image change vs text change (--qa-clip)"),
    Field(
        "qa_pass",
        "bool_",
        "auto-QA: inside every --qa-min/max-* bound set (null: no bound set)",
        counts=(("qa_failed", False),),
    ),
    # keys of the per-sample JSON only
    Field(
        "sampler",
        "json",
        "the sampler settings (steps, guidance scales, resolution, rng)",
        sample_json=True,
        ledger=False,
    ),
    Field("precision", "json", "the model actors' device and dtype", sample_json=True, ledger=False),
    Field("input", "json", "the input row's own JSON, carried through", sample_json=True, ledger=False),
    Field(
        "instruction_truncated",
        "json",
        "the instruction was cut to the prompt's token budget",
        sample_json=True,
        ledger=False,
    ),
    Field("sizes", "json", "resize mode and the input, working and output sizes", sample_json=True, ledger=False),
)

# the summarizer pass (make-dataset, edit --expressive summarize) adds these columns
SUMMARY_FIELDS: tuple[Field, ...] = (
    Field(
        "explanation",
        "string",
        "the MLLM's paragraph on what the edited image will be like",
        sample_json=True,
        report="explanation",
    ),
    Field("summary", "string", "the summarizer's concise expressive instruction", sample_json=True, report="summary"),
)

METRIC_PREFIX = "metric_"


def metric_field(metric: str) -> Field:
    """eval's column of one metric (the report shows `metric_*` columns in a table of their own)."""
    return Field(
        f"{METRIC_PREFIX}{metric}", "float64", f"{metric} of the edit against the row's goal", sample_json=True
    )


# ---------------------------------------------------------------------------------------- derived views
# Each reads the table when called, so a field added to it (or patched in by a test) shows up everywhere.


def ledger_fields(extra: Iterable[Field] = ()) -> list[Field]:
    return [f for f in (*LEDGER_FIELDS, *extra) if f.ledger]


def ledger_schema(extra: Iterable[Field] = ()):
    """The Parquet schema of a unit's ledger: the table's columns, then the job's own."""
    import pyarrow as pa

    return pa.schema([f.arrow() for f in ledger_fields(extra)])


def sample_json_keys(extra: Iterable[Field] = ()) -> list[str]:
    return [f.name for f in (*LEDGER_FIELDS, *extra) if f.sample_json]


def sample_record(values: dict[str, Any], extra: Iterable[Field] = ()) -> dict[str, Any]:
    """The per-sample JSON of an ok row: its `sample_json` fields, taken from `values` (the ledger row
    merged with the JSON-only keys)."""
    return {name: values.get(name) for name in sample_json_keys(extra)}


def report_fields() -> list[tuple[str, str]]:
    """(report label, column) of every known field the report shows, in table order."""
    return [(f.report, f.name) for f in (*LEDGER_FIELDS, *SUMMARY_FIELDS) if f.report]


def timing_columns() -> list[str]:
    """The per-row stage timings of the ledger, in pipeline order."""
    return [f.name for f in LEDGER_FIELDS if f.ledger and f.name.startswith("ms_")]


def count_names() -> list[str]:
    return [name for f in LEDGER_FIELDS for name, _ in f.counts]


def tally(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The status counts of some ledger rows: {"ok": 3, "error": 1, "qa_failed": 0}. A value counted is
    matched by identity for booleans (False is not 0) and by equality otherwise."""
    counted = [(f.name, name, value) for f in LEDGER_FIELDS for name, value in f.counts]
    out = {name: 0 for _, name, _ in counted}
    for row in rows:
        for column, name, value in counted:
            got = row.get(column)
            out[name] += (got is value) if isinstance(value, bool) else (got == value)
    return out
