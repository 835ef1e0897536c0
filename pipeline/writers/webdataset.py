"""`--output-format webdataset`: per unit a tar of the ok rows' images + JSON, and a Parquet ledger.

    OutputLayout.shard(unit)    <key>.<ext> (the edit), <key>.input.<ext> and <key>.goal.<ext> (--copy-input),
                                <key>.json, in row order; written only when a row is ok
    OutputLayout.ledger(unit)   one row per input row

The tar has fixed member metadata (pipeline.shards.tar_bytes): equal rows give equal bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline.writers.base import RowOutput, parquet_bytes, read_parquet

_ROLE_INFIX = {"image": "", "input": "input.", "goal": "goal."}  # member name = <key>.<infix><ext>


def members(key: str, row: RowOutput) -> list[tuple[str, bytes]]:
    """A row's tar members: its images in the order given, then its JSON."""
    out = [(f"{key}.{_ROLE_INFIX[role]}{ext}", data) for role, ext, data in row.images]
    if row.sample_json is not None:
        out.append((f"{key}.json", row.sample_json))
    return out


def _role(ext: str) -> tuple[str, str]:
    """A member's extension -> (role, image extension): `input.png` -> ("input", "png")."""
    for role, infix in _ROLE_INFIX.items():
        if infix and ext.startswith(infix):
            return role, ext[len(infix) :]
    return "image", ext


@dataclass
class ShardRow:
    """One ok row as an output tar holds it: the images by role ("image" is the edit) and its JSON."""

    key: str
    images: dict[str, bytes] = field(default_factory=dict)  # role -> encoded image
    meta: dict[str, Any] = field(default_factory=dict)


def iter_shard_rows(output: str, storage_options: dict | None = None) -> Iterator[ShardRow]:
    """Every row of a webdataset-format output's tar shards, in shard-name then row order (what a reader of
    the output sees, without the ledger: the report, the contact sheet and the held-out checks)."""
    from pipeline.layout import OutputLayout
    from pipeline.shards import iter_samples
    from pipeline.storage import Store

    store = Store.open(output, options=storage_options)
    layout = OutputLayout(store.url)
    for name in sorted(n for n in store.list("shards") if n.endswith(".tar")):
        with store.fs.open(store.path(layout.shard(name[: -len(".tar")])), "rb") as f:
            for key, fields in iter_samples(f):
                row = ShardRow(key)
                for ext, data in fields.items():
                    if ext == "json":
                        row.meta = json.loads(data)
                    else:
                        role, _ = _role(ext)
                        row.images.setdefault(role, data)  # the first of a role, as the decode stage picks
                yield row


@dataclass(frozen=True)
class WebDatasetWriter:
    name: str = "webdataset"

    def output_path(self, layout, unit: str) -> str:
        return layout.shard(unit)

    def write(self, store, layout, unit: str, rows: list[RowOutput], schema) -> dict[str, str | None]:
        import pyarrow as pa

        from pipeline.shards import tar_bytes

        tar = [m for row in rows for m in members(row.ledger["key"], row)]
        shard = None
        if tar:
            shard = layout.shard(unit)
            store.write_atomic(shard, tar_bytes(tar))
        ledger = layout.ledger(unit)
        store.write_atomic(ledger, parquet_bytes(pa.Table.from_pylist([r.ledger for r in rows], schema=schema)))
        return {"ledger": ledger, "shard": shard}

    def read_rows(self, store, layout, unit: str) -> dict[int, RowOutput]:
        from pipeline.shards import read_members, split_name

        by_key: dict[str, RowOutput] = {}
        rows: dict[int, RowOutput] = {}
        for ledger in read_parquet(store, layout.ledger(unit)).to_pylist():
            rows[ledger["row_index"]] = RowOutput(ledger)
            if ledger["status"] == "ok":  # an ok row's key is unique in its unit (duplicates are error rows)
                by_key[ledger["key"]] = rows[ledger["row_index"]]
        if store.exists(layout.shard(unit)):
            for name, data in read_members(store.read_bytes(layout.shard(unit))).items():
                key, ext = split_name(name)
                row = by_key.get(key)
                if row is None:
                    continue
                if ext == "json":
                    row.sample_json = data
                else:
                    row.images.append((*_role(ext), data))
        return rows

    def read_ledger(self, store, files: dict[str, Any]):
        return read_parquet(store, files["ledger"])

    def read_images(self, fs, path: str, keys: set[str]) -> dict[str, bytes]:
        """One streaming pass over the tar; a key's edit is its `<key>.<jpg|png|webp>` member."""
        from pipeline.outputs import IMAGE_FORMATS
        from pipeline.shards import ShardReadError, iter_samples

        found: dict[str, bytes] = {}
        with fs.open(path, "rb") as f:
            try:
                for key, fields in iter_samples(f):
                    ext = next((e for e in IMAGE_FORMATS if e in fields), None)
                    if key in keys and key not in found and ext is not None:
                        found[key] = fields[ext]
            except ShardReadError:
                pass  # a truncated tar: the samples before the break still count
        return found
