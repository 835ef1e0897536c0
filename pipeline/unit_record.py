"""The record a write task hands the driver for one unit: what it wrote and what it counted.

It travels as a Ray Data row, so `to_row` flattens it to scalar columns (the nested parts as JSON strings)
and the driver reads it back with `from_row`; the commit record (pipeline/ledger.py) is made from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.fields import count_names

# the unit row's own columns, passed through from the read stage (pipeline/rows.py UNIT_COLUMNS less payload)
_UNIT = ("unit", "shard", "index", "attempt", "last", "n_rows", "skip", "previous")


def extra_count_names() -> list[str]:
    """The status counts besides ok / error (pipeline/fields.py), e.g. qa_failed: a column each."""
    return [n for n in count_names() if n not in ("ok", "error")]


@dataclass
class WrittenUnit:
    unit: str  # the unit base name (no attempt suffix)
    shard: str  # the input shard's URL
    index: int  # the unit's index in its shard
    attempt: int  # 0, +1 per --retry-errors rewrite
    last: bool  # the shard's last unit
    n_rows: int  # input rows in the unit
    skip: bool  # committed by an earlier run: only counted
    previous: str  # the committed unit this one replaces ("" if none)
    name: str  # the unit's file name: base + attempt suffix
    ok: int = 0  # rows edited now
    error: int = 0  # error rows now
    kept: int = 0  # ok rows kept from the replaced attempt (--retry-errors)
    error_rows: list[int] = field(default_factory=list)  # row indexes of the error rows
    error_kinds: dict[str, int] = field(default_factory=dict)  # "stage:Kind" -> rows
    ledger: str = ""  # the ledger file written ("" for a skipped unit)
    tar: str = ""  # the tar of the ok rows ("" when none, or another format)
    ms: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds over the unit's rows
    unreadable_tail: dict[str, Any] | None = None  # the unit ends in a shard's unreadable rest
    counts: dict[str, int] = field(default_factory=dict)  # the extra status counts (extra_count_names)
    output_format: str | None = None  # pipeline/writers: how the files are written

    @classmethod
    def of(cls, row: dict[str, Any], name: str) -> WrittenUnit:
        """An empty record for the unit row `row` (the read stage's columns), written as `name`."""
        return cls(**{k: row[k] for k in _UNIT}, name=name, counts={n: 0 for n in extra_count_names()})

    def to_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in (*_UNIT, "name", "ok", "error", "kept", "ledger", "tar")}
        row.update(
            error_rows=json.dumps(self.error_rows),
            error_kinds=json.dumps(self.error_kinds),
            ms_json=json.dumps(self.ms),
            unreadable_tail=json.dumps(self.unreadable_tail) if self.unreadable_tail else "",
            output_format=self.output_format or "",
            **{n: self.counts.get(n, 0) for n in extra_count_names()},
        )
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WrittenUnit:
        return cls(
            unit=row["unit"],
            shard=row["shard"],
            index=int(row["index"]),
            attempt=int(row["attempt"]),
            last=bool(row["last"]),
            n_rows=int(row["n_rows"]),
            skip=bool(row["skip"]),
            previous=row["previous"],
            name=row["name"],
            ok=int(row["ok"]),
            error=int(row["error"]),
            kept=int(row["kept"]),
            error_rows=json.loads(row["error_rows"]),
            error_kinds=json.loads(row["error_kinds"]),
            ledger=row["ledger"],
            tar=row["tar"],
            ms=json.loads(row["ms_json"]),
            unreadable_tail=json.loads(row["unreadable_tail"]) if row.get("unreadable_tail") else None,
            counts={n: int(row.get(n, 0)) for n in extra_count_names()},
            output_format=row.get("output_format") or None,
        )
