"""What every output format's writer is given and promises (see pipeline/writers/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pipeline.layout import OutputLayout
    from pipeline.storage import Store

OUTPUT_FORMATS = ("webdataset", "parquet")  # the --output-format values, one writer each


@dataclass
class RowOutput:
    """One row of a unit as the write stage hands it to a writer."""

    ledger: dict[str, Any]  # the ledger row: a value for every column of the unit's schema
    # (role, extension, bytes) in the order written: role "image" (the edit), "input" (--copy-input), "goal"
    images: list[tuple[str, str, bytes]] = field(default_factory=list)
    sample_json: bytes | None = None  # the per-sample JSON; ok rows only


class UnitWriter(Protocol):
    name: str  # the --output-format value

    def output_path(self, layout: OutputLayout, unit: str) -> str:
        """What an ok row's `output_shard` names: the file holding its image, relative to OUTPUT."""

    def write(
        self, store: Store, layout: OutputLayout, unit: str, rows: list[RowOutput], schema
    ) -> dict[str, str | None]:
        """Writes the unit's files, each atomically -> the commit record's `files`: {"ledger": the file
        with the ledger columns, "shard": the file with the images, None when no row is ok}."""

    def read_rows(self, store: Store, layout: OutputLayout, unit: str) -> dict[int, RowOutput]:
        """A written unit's rows by row index (the rows a new attempt of the unit keeps)."""

    def read_ledger(self, store: Store, files: dict[str, Any]):
        """The ledger columns of a committed unit, as a pyarrow Table (no image bytes)."""

    def read_images(self, fs, path: str, keys: set[str]) -> dict[str, bytes]:
        """{key: edited image bytes} for the wanted keys of one output file (an fsspec filesystem and path)."""


def parquet_bytes(table) -> bytes:
    """A table as Parquet bytes, deterministic for equal content (zstd, no timestamps in the footer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue().to_pybytes()


def read_parquet(store: Store, rel: str, columns: list[str] | None = None):
    """One Parquet file under a store as a pyarrow Table."""
    import pyarrow.parquet as pq

    with store.fs.open(store.path(rel), "rb") as f:
        return pq.read_table(f, columns=columns)
