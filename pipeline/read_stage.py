"""The read stage of the edit plan: one input shard -> unit rows of raw samples (see pipeline/stages.py).

Units are fixed runs of `unit_rows` consecutive rows of one shard, named after the shard and their index;
committed units pass through as `skip` rows. A committed unit is *reopened* (built again as a new attempt
that keeps the rows it already has) when it ends in a shard's unreadable tail, or with --retry-errors when
it has error rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from pipeline.location import Reach
from pipeline.rows import KEEP, PENDING, fail, pack, require_columns
from pipeline.sources import SourceOptions


def unit_base(shard_url: str, index: int) -> str:
    """Deterministic unit name: readable shard stem + hash of the full URL (same stems in other folders)."""
    stem = shard_url.rstrip("/").rsplit("/", 1)[-1]
    stem = re.sub(r"\.tar$", "", stem)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:80]
    return f"{stem}-{hashlib.sha256(shard_url.encode()).hexdigest()[:8]}-{index:05d}"


def unit_name(base: str, attempt: int) -> str:
    return base if attempt == 0 else f"{base}-r{attempt}"


_ATTEMPT = re.compile(r"^(.*)-r(\d+)$")


def parse_unit(name: str) -> tuple[str, int]:
    """`shard-1a2b3c4d-00003-r2` -> (`shard-1a2b3c4d-00003`, 2)."""
    m = _ATTEMPT.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


@dataclass(frozen=True)
class ReadSettings:
    unit_rows: int
    retry_errors: bool
    reach: Reach  # how the inputs are reached (pipeline.location)
    source: SourceOptions = SourceOptions()  # manifests and image folders (pipeline.sources)


def shard_complete(committed: dict[int, dict[str, Any]]) -> bool:
    """Every unit of the shard is committed (the last one and all before it) and none ends in an unreadable
    tail: a shard cut short (a partial upload) stays open until its whole file has been read."""
    last = [i for i, r in committed.items() if r["last"]]
    return (
        bool(last)
        and all(i in committed for i in range(last[0] + 1))
        and not any(r.get("unreadable_tail") for r in committed.values())
    )


def shard_done(committed: dict[int, dict[str, Any]], retry_errors: bool) -> bool:
    """Nothing to do in this shard: every unit is committed and none has error rows to redo."""
    return shard_complete(committed) and not (retry_errors and any(r["error_rows"] for r in committed.values()))


def reopened(rec: dict[str, Any] | None, retry_errors: bool) -> bool:
    """A committed unit to build again: it ends in an unreadable tail (always), or has error rows to retry."""
    return rec is not None and (bool(rec.get("unreadable_tail")) or (retry_errors and bool(rec["error_rows"])))


def read_shard(item: dict[str, Any], settings: ReadSettings) -> Iterator[dict[str, Any]]:
    """One input shard -> unit rows (flat_map). `item` = {"shard": url, "size": bytes when planned (-1:
    unknown), "committed": json of the shard's committed units {index: {"unit", "attempt", "n_rows", "last",
    "error_rows", "unreadable_tail"}}}."""
    from pipeline.shards import ShardReadError, unsafe_key
    from pipeline.sources import Unfetched

    require_columns("read", item, ("shard", "committed"))
    shard = item["shard"]
    size = item.get("size", -1)
    committed = {int(k): v for k, v in json.loads(item["committed"]).items()}

    samples: list[dict[str, Any]] = []
    index = 0
    seen: dict[str, int] = {}
    pending: list[dict[str, Any]] | None = None  # one unit held back until we know whether it is the last

    def flush(unit_samples: list[dict[str, Any]], idx: int, last: bool) -> dict[str, Any]:
        rec = committed.get(idx)
        skip = rec is not None and not reopened(rec, settings.retry_errors)
        return _unit_row(shard, idx, rec, unit_samples, last, skip, settings)

    row_index = 0
    try:
        source = _samples(shard, size, settings)
        with contextlib.closing(source):  # the source's file and fetch threads are released on an early stop
            for key, fields in source:
                sample = {"key": key, "row_index": row_index, "status": PENDING, "fields": fields}
                if isinstance(fields, Unfetched):  # a manifest row whose image could not be read
                    fail(sample, "fetch", fields.reason)
                elif unsafe_key(key):  # never let it name an output member: refused as this row's error
                    fail(sample, "read", f"unsafe member name {key!r}: absolute or containing '..'; refused")
                elif key in seen:
                    fail(
                        sample,
                        "read",
                        f"duplicate key: {key!r} already at row {seen[key]} of this shard (the "
                        f"same key again, or members of one sample that are not contiguous)",
                    )
                else:
                    seen[key] = row_index
                row_index += 1
                samples.append(sample)
                if len(samples) == settings.unit_rows:
                    if pending is not None:
                        yield flush(pending, index - 1, last=False)
                    pending, samples, index = samples, [], index + 1
    except ShardReadError as e:
        samples.append(_unreadable_tail(row_index, e))
    except FileNotFoundError:
        # planned, then gone: never a committed "missing" unit, which would count the shard as done for good
        raise FileNotFoundError(
            f"input shard {shard} was there when the run was planned but is not found now; "
            f"restore it or leave it out of --input, then run the same command again"
        ) from None
    if samples or pending is None:  # a valid tar without samples is one complete unit of 0 rows
        if pending is not None:
            yield flush(pending, index - 1, last=False)
        yield flush(samples, index, last=True)
    else:
        yield flush(pending, index - 1, last=True)


def _samples(shard: str, size: int, settings: ReadSettings) -> Iterator[tuple[str, Any]]:
    """(key, fields) of one input in row order. A tar is read with its planned size, so that a shard cut short
    is told from a whole one; a manifest or a folder of images yields the same samples (pipeline.sources)."""
    from pipeline.shards import iter_samples
    from pipeline.sources import iter_source, source_kind

    if source_kind(shard) != "tar":
        yield from iter_source(settings.reach.at(shard), settings.source, settings.unit_rows)
        return
    with settings.reach.at(shard).open() as f:
        yield from iter_samples(f, size if size >= 0 else None)


def _unreadable_tail(row_index: int, e) -> dict[str, Any]:
    """The error row that stands for everything from `row_index` on in a broken or cut-short shard. Its
    unit stays open (`unreadable_tail` in the commit): every later run reads the shard again, and once the
    file is whole the rows from here on are edited (the bytes read now let the driver check that the
    finished file starts with them)."""
    broken = {
        "key": f"__unreadable__{row_index:06d}",
        "row_index": row_index,
        "status": PENDING,
        "unreadable_tail": {"row": row_index, "bytes": e.bytes_read, "sha256": e.sha256},
    }
    fail(
        broken,
        "read",
        f"shard unreadable after {e.samples_read} samples: {e}; every later run reads the rest "
        f"again (a cut-short upload is picked up once the whole file is there)",
    )
    return broken


def _unit_row(
    shard: str,
    index: int,
    rec: dict | None,
    samples: list[dict[str, Any]],
    last: bool,
    skip: bool,
    settings: ReadSettings,
) -> dict[str, Any]:
    base = unit_base(shard, index)
    if skip:
        return {
            "unit": base,
            "shard": shard,
            "index": index,
            "attempt": rec["attempt"],
            "last": last,
            "n_rows": rec["n_rows"],
            "skip": True,
            "previous": "",
            "payload": b"",
        }
    attempt, previous = 0, ""
    if rec is not None:  # reopened: redo its tail / error rows and rows it never had, keep the rest as it is
        attempt, previous = rec["attempt"] + 1, rec["unit"]
        kept = _kept_rows(rec, index * settings.unit_rows, settings.retry_errors)
        samples = [
            {"key": s["key"], "row_index": s["row_index"], "status": KEEP} if s["row_index"] in kept else s
            for s in samples
        ]
    return {
        "unit": base,
        "shard": shard,
        "index": index,
        "attempt": attempt,
        "last": last,
        "n_rows": len(samples),
        "skip": False,
        "previous": previous,
        "payload": pack(samples),
    }


def _kept_rows(rec: dict[str, Any], first_row: int, retry_errors: bool) -> set[int]:
    """Row indexes of a committed unit that a new attempt copies: the rows the committed unit holds (its
    rows are consecutive from `first_row`), less its unreadable tail, less its error rows with
    --retry-errors. A row the committed unit never had (read past a tail that is now readable) is new."""
    redo = set(rec["error_rows"]) if retry_errors else set()
    tail = rec.get("unreadable_tail")
    if tail:
        redo.add(tail["row"])
    return set(range(first_row, first_row + rec["n_rows"])) - redo
