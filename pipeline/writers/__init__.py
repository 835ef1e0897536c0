"""How a unit's rows become files: one `UnitWriter` per `--output-format`.

    writer = writer_for("parquet", with_input=True)
    files = writer.write(store, layout, "shard-1a2b3c4d-00003", rows, schema)   # {"ledger": rel, "shard": rel}

The write stage (pipeline/stages.py) renders each row (ledger row, encoded images, per-sample JSON) and
hands the unit to the run's writer; the writer owns the file format and nothing else. Every writer keeps
the commit protocol's promises (docs/pipeline.md "Exactly once"): each file is written whole or not at all
(`Store.write_atomic`), its name is the unit's (a retried task rewrites the same name with the same bytes),
it lies in a folder of `OutputLayout.UNIT_FOLDERS` (so the orphan sweep finds it), and nothing is visible
to readers before the driver writes the commit record.

    webdataset   per unit a tar of the ok rows' images + JSON and a Parquet ledger of every row
    parquet      per unit one Parquet file: every row, the ledger columns + the image bytes in binary columns
(pipeline/layout.py names the files.)
"""

from __future__ import annotations

from typing import Any

from pipeline.writers.base import OUTPUT_FORMATS, RowOutput, UnitWriter  # noqa: F401 (the seam: importable from here)

DEFAULT_FORMAT = "webdataset"  # what a commit record without `output_format` (an older run) was written in


def writer_for(output_format: str | None, with_input: bool = False) -> UnitWriter:
    """The writer of an output format (None: the default, as older commit records have it)."""
    from pipeline.writers.parquet import ParquetWriter
    from pipeline.writers.webdataset import WebDatasetWriter

    name = output_format or DEFAULT_FORMAT
    if name == "webdataset":
        return WebDatasetWriter()
    if name == "parquet":
        return ParquetWriter(with_input)
    raise ValueError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {name!r}")


def writer_of_record(rec: dict[str, Any]) -> UnitWriter:
    """The writer that wrote a committed unit."""
    return writer_for(rec.get("output_format"))


def writer_of_path(path: str) -> UnitWriter:
    """The writer of an output file, from its name (`output_shard` of a ledger row)."""
    return writer_for("parquet" if path.endswith(".parquet") else "webdataset")
