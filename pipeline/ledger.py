"""The output prefix as a database: run record, commit records, orphans, and the committed ledger.

The files are those of pipeline/layout.py: a run record, per unit the files of its output format
(pipeline/writers) and a commit record written LAST, by the driver only (the unit exists from that moment
on), and the last finished run's summary.

A unit is *committed* when its commit record exists. Several commit records of one unit base (a
--retry-errors rewrite, `<base>-r<N>`) can coexist for a moment after a crash: the highest attempt wins and
the others are stale. Files of units that are not the winning commit of their base are *orphans*: readers
ignore them and the next run deletes them. See docs/pipeline.md for the full protocol.
"""

from __future__ import annotations

import datetime as _dt
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.identity import identity_diff
from pipeline.layout import TMP_PREFIX, OutputLayout
from pipeline.location import Location
from pipeline.refusals import Refused
from pipeline.storage import Store
from pipeline.unit_record import WrittenUnit
from pipeline.writers import writer_of_record


class RunConfigMismatch(Refused, RuntimeError):
    """The output prefix belongs to a run with another configuration."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------------------- run record


def ensure_run_record(store: Store, identity: dict[str, Any], fingerprint: str, info: dict[str, Any]) -> bool:
    """Writes the run record if the output is new; refuses (RunConfigMismatch) if it holds a different run.

    Returns True when this call created the record.
    """
    if store.exists(OutputLayout.RUN_RECORD):
        existing = json.loads(store.read_bytes(OutputLayout.RUN_RECORD))
        if existing.get("run_fingerprint") != fingerprint:
            diff = identity_diff(existing.get("identity", {}), identity) or ["(identity not comparable)"]
            raise RunConfigMismatch(
                f"{store.url} already holds run {str(existing.get('run_fingerprint'))[:16]} with a different "
                f"configuration; refusing to mix runs. Differences (existing -> this command):\n  "
                + "\n  ".join(diff)
                + "\nUse a new --output for the new configuration, or repeat the original settings to resume."
            )
        return False
    record = {"run_fingerprint": fingerprint, "identity": identity, "created_at": now(), **info}
    store.write_atomic(OutputLayout.RUN_RECORD, json.dumps(record, indent=2, sort_keys=True).encode())
    return True


# -------------------------------------------------------------------------------------------- commits


def commit_record(unit: WrittenUnit, run_fingerprint: str) -> dict[str, Any]:
    """The commit record of one unit, from what its write task reported."""
    return {
        "unit": unit.name,
        "base": unit.unit,
        "attempt": unit.attempt,
        "source_shard": unit.shard,
        "index": unit.index,
        "last": unit.last,
        "n_rows": unit.n_rows,
        # kept rows (--retry-errors) are the replaced attempt's ok rows: only error rows are redone
        "counts": {"ok": unit.ok + unit.kept, "error": unit.error},
        "new": {"ok": unit.ok, "error": unit.error, "kept": unit.kept},
        "error_rows": unit.error_rows,
        "error_kinds": unit.error_kinds,
        "files": {"ledger": unit.ledger, "shard": unit.tar or None},
        "replaces": unit.previous or None,
        "run_fingerprint": run_fingerprint,
        "ms": unit.ms,
        "committed_at": now(),
        # the unit ends in a shard's unreadable rest (a cut-short upload): reopened by every later run
        "unreadable_tail": unit.unreadable_tail,
        # the other status counts of pipeline/fields.py, e.g. qa_failed: ok rows outside the auto-QA bounds
        **unit.counts,
        "output_format": unit.output_format,  # pipeline/writers: how the files are written
    }


@dataclass
class OutputState:
    """What an output prefix holds, as far as the commit protocol is concerned."""

    commits: dict[str, dict[str, Any]] = field(default_factory=dict)  # base -> winning commit record
    stale_commits: list[str] = field(default_factory=list)  # unit names of superseded commit records
    orphans: list[str] = field(default_factory=list)  # relative paths of files no winning commit names

    def committed_for_shard(self) -> dict[str, dict[int, dict[str, Any]]]:
        """{shard url: {unit index: {"unit", "attempt", "n_rows", "last", "error_rows"}}} for the read stage."""
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for rec in self.commits.values():
            out.setdefault(rec["source_shard"], {})[rec["index"]] = {
                "unit": rec["unit"],
                "attempt": rec["attempt"],
                "n_rows": rec["n_rows"],
                "last": rec["last"],
                "error_rows": rec["error_rows"],
                "unreadable_tail": rec.get("unreadable_tail"),
            }
        return out

    def totals(self) -> dict[str, int]:
        ok = sum(r["counts"]["ok"] for r in self.commits.values())
        err = sum(r["counts"]["error"] for r in self.commits.values())
        return {"rows": ok + err, "ok": ok, "error": err, "units": len(self.commits)}


def load_state(store: Store, threads: int = 16) -> OutputState:
    """Reads every commit record and lists the data folders: winning commits, stale commits, orphans."""
    layout = OutputLayout(store.url)
    listing = store.list(layout.COMMITS)
    names = [unit for unit in map(layout.commit_unit, listing) if unit]

    def read(name: str) -> dict[str, Any] | None:
        try:
            return json.loads(store.read_bytes(layout.commit(name)))
        except FileNotFoundError:
            return None  # deleted while we listed (a stale record removed by a finishing run)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        records = [r for r in pool.map(read, names) if r is not None]
    state = OutputState()
    for rec in sorted(records, key=lambda r: r["attempt"]):
        old = state.commits.get(rec["base"])
        if old is not None:
            state.stale_commits.append(old["unit"])
        state.commits[rec["base"]] = rec
    state.orphans = find_orphans(store, state, listing)
    return state


def find_orphans(store: Store, state: OutputState, commit_listing: list[str] | None = None) -> list[str]:
    """Relative paths of the files no winning commit of `state` names, half-written temporaries included.

    Lists the unit folders of every output format: the commit records are already in `state`
    (`commit_listing`, the names in the commits folder, saves listing it again when the caller has it).
    """
    layout = OutputLayout(store.url)
    live = {r["unit"] for r in state.commits.values()}
    orphans = []
    for folder in layout.UNIT_FOLDERS:
        for name in store.list(folder):
            if layout.unit_of(f"{folder}/{name}") not in live:  # temporaries have no unit
                orphans.append(f"{folder}/{name}")
    listing = store.list(layout.COMMITS) if commit_listing is None else commit_listing
    return orphans + [f"{layout.COMMITS}/{name}" for name in listing if name.startswith(TMP_PREFIX)]


def sweep(store: Store, state: OutputState, threads: int = 16) -> int:
    """Deletes stale commit records first (their files then are plain orphans), then orphan files."""
    layout = OutputLayout(store.url)
    stale_files: list[str] = []
    for unit in state.stale_commits:
        store.delete(layout.commit(unit))
        stale_files += layout.unit_files(unit)
    paths = sorted(set(state.orphans) | set(stale_files))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(store.delete, paths))
    removed = len(state.orphans) + len(state.stale_commits)
    state.orphans, state.stale_commits = [], []
    return removed


# ------------------------------------------------------------------------------------------- reading


def read_ledger(output: str | Location, storage_options: dict | None = None):
    """The committed ledger of an output prefix as one pyarrow Table (winning commits only; orphans and
    superseded attempts are left out). Sorted by source shard and row index."""
    import pyarrow as pa

    from pipeline.fields import ledger_schema

    store = Store.open(output, storage_options)
    state = load_state(store)

    def read(rec: dict[str, Any]):  # the ledger columns of the unit, in whichever format it was written
        return writer_of_record(rec).read_ledger(store, rec["files"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(read, state.commits.values()))
    if not tables:
        return ledger_schema().empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    return table.sort_by([("source_shard", "ascending"), ("row_index", "ascending")])
