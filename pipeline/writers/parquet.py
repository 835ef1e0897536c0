"""`--output-format parquet`: per unit one Parquet file of every row, its ledger columns and its images.

    OutputLayout.data(unit)   the ledger columns (pipeline/fields.py) + `image` (the edit's file bytes, null
                              for an error row), `image_format` (jpg | png | webp), `sample_json` (the
                              per-sample JSON a tar would hold); with --copy-input also `input_image` (same
                              format as `image`), `goal_image` and `goal_image_format`

The folder loads as one table wherever Parquet does: `duckdb.sql("from 'OUT/data/*.parquet'")`,
`spark.read.parquet("OUT/data")`, `datasets.load_dataset("parquet", data_files="OUT/data/*.parquet")`.
Readers of a run that may still be going, or that crashed, take the committed units only
(`pipeline.ledger.read_ledger`; a finished run has no other file there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.fields import Field
from pipeline.writers.base import RowOutput, parquet_bytes, read_parquet

IMAGE_FIELDS = (
    Field("image", "binary", "the edited image's file bytes; null for an error row"),
    Field("image_format", "string", "jpg | png | webp: the format of `image` (and `input_image`)"),
    Field("sample_json", "string", "the per-sample JSON (sampler settings, the input's own JSON, sizes, ...)"),
)
COPY_FIELDS = (  # --copy-input
    Field("input_image", "binary", "the input as the output shows it: the edit's size and format"),
    Field("goal_image", "binary", "the row's goal image as it came, when it had one"),
    Field("goal_image_format", "string", "jpg | png | webp: the format of `goal_image`"),
)
_NOT_LEDGER = {f.name for f in (*IMAGE_FIELDS, *COPY_FIELDS)}


@dataclass(frozen=True)
class ParquetWriter:
    with_input: bool = False
    name: str = "parquet"

    def output_path(self, layout, unit: str) -> str:
        return layout.data(unit)

    def write(self, store, layout, unit: str, rows: list[RowOutput], schema) -> dict[str, str | None]:
        import pyarrow as pa

        extra = IMAGE_FIELDS + (COPY_FIELDS if self.with_input else ())
        for f in extra:
            schema = schema.append(f.arrow())
        table = pa.Table.from_pylist([{**r.ledger, **self._image_columns(r)} for r in rows], schema=schema)
        rel = layout.data(unit)
        store.write_atomic(rel, parquet_bytes(table))
        return {"ledger": rel, "shard": rel if any(r.images for r in rows) else None}

    def _image_columns(self, row: RowOutput) -> dict[str, Any]:
        images = {role: (ext, data) for role, ext, data in row.images}
        image_ext, image = images.get("image", (None, None))
        cols = {
            "image": image,
            "image_format": image_ext,
            "sample_json": None if row.sample_json is None else row.sample_json.decode("utf-8"),
        }
        if "input" in images and image_ext is None:  # a copy without an edit (make-dataset without --edit)
            cols["image_format"] = images["input"][0]
        if self.with_input:
            goal_ext, goal = images.get("goal", (None, None))
            cols.update(input_image=images.get("input", (None, None))[1], goal_image=goal, goal_image_format=goal_ext)
        return cols

    def read_rows(self, store, layout, unit: str) -> dict[int, RowOutput]:
        rows: dict[int, RowOutput] = {}
        for record in read_parquet(store, layout.data(unit)).to_pylist():
            ledger = {k: v for k, v in record.items() if k not in _NOT_LEDGER}
            images = [
                (role, record.get(fmt), record.get(col))
                for role, col, fmt in (
                    ("image", "image", "image_format"),
                    ("input", "input_image", "image_format"),
                    ("goal", "goal_image", "goal_image_format"),
                )
                if record.get(col) is not None
            ]
            text = record.get("sample_json")
            rows[ledger["row_index"]] = RowOutput(ledger, images, None if text is None else text.encode("utf-8"))
        return rows

    def read_ledger(self, store, files: dict[str, Any]):
        import pyarrow.parquet as pq

        with store.fs.open(store.path(files["ledger"]), "rb") as f:
            data = pq.ParquetFile(f)
            return data.read(columns=[n for n in data.schema_arrow.names if n not in _NOT_LEDGER])

    def read_images(self, fs, path: str, keys: set[str]) -> dict[str, bytes]:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["key", "image"])
        return {
            k: img
            for k, img in zip(table["key"].to_pylist(), table["image"].to_pylist())
            if k in keys and img is not None
        }
