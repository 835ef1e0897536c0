"""The records that travel between stages (the ledger's columns are in pipeline/fields.py).

Ray Data carries one *unit* per dataset row: up to `unit_rows` consecutive samples of one input shard
(see docs/pipeline.md for why units, not single samples, are the rows). A unit row has these columns:

    unit     str    unit name without the attempt suffix: "<shard-stem>-<url-hash>-<index>"
    shard    str    source shard URL
    index    int    unit index inside the shard (rows index*unit_rows ...)
    attempt  int    0 for the first commit of this unit, +1 for each --retry-errors rewrite
    last     bool   this is the shard's last unit
    n_rows   int    input rows in the unit
    skip     bool   already committed by an earlier run: passes through, only counted
    previous str    the committed unit this one replaces (--retry-errors), "" if none
    payload  bytes  the samples (pickled list of sample dicts; empty when skip)

A sample dict gains fields stage by stage; each stage declares the fields it needs (`NEEDS`) and fails with
the stage name and the missing fields when a sample lacks them: that is a bug in the plan, not bad data.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable

# sample status while in flight; the ledger only ever holds "ok" and "error"
PENDING, OK, ERROR, KEEP = "pending", "ok", "error", "keep"

UNIT_COLUMNS = ("unit", "shard", "index", "attempt", "last", "n_rows", "skip", "previous", "payload")


class StageInputError(RuntimeError):
    """A stage got records without the columns/fields it declares: a plan bug, stops the job."""


def require_columns(stage: str, row: dict[str, Any], columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise StageInputError(f"stage {stage!r}: missing columns {missing}; the row has {sorted(row)}")


def require_fields(stage: str, samples: list[dict[str, Any]], fields: Iterable[str]) -> None:
    fields = tuple(fields)
    for s in samples:
        if s["status"] not in (PENDING,):
            continue  # finished rows (errors, kept rows) carry only what they have
        missing = [f for f in fields if f not in s]
        if missing:
            raise StageInputError(
                f"stage {stage!r}: sample {s.get('key')!r} is missing fields {missing}; it has {sorted(s)}"
            )


def pack(samples: list[dict[str, Any]]) -> bytes:
    return pickle.dumps(samples, protocol=5)


def unpack(payload: bytes) -> list[dict[str, Any]]:
    return pickle.loads(payload) if payload else []


def fail(sample: dict[str, Any], stage: str, error: BaseException | str) -> None:
    """Turns a sample into an error row: the stage and a message that says what was wrong."""
    sample["status"] = ERROR
    sample["error_stage"] = stage
    sample["error"] = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    for heavy in ("fields", "pixels", "conditioning", "edited", "reconstruction", "source"):
        sample.pop(heavy, None)  # nothing downstream needs them; keep units light


def error_kind(stage: str | None, error: str | None) -> str:
    """A short class for grouping errors: "decode:UnidentifiedImageError", "validate:missing instruction"."""
    if not error:
        return f"{stage}:?"
    head = error.split(":", 1)[0].strip()
    return f"{stage}:{head}"
