"""The output prefix as a database: run record, commit records, orphans, and the committed ledger.

    OUTPUT/run.json                 run identity + fingerprint (first run writes it; later runs must match)
    OUTPUT/shards/<unit>.tar        edited images + per-sample JSON (ok rows only)
    OUTPUT/ledger/<unit>.parquet    one row per input row of the unit
    OUTPUT/commits/<unit>.json      written LAST, by the driver only: the unit exists from this moment on
    OUTPUT/summary.json             the last finished run's counts

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

from .config import identity_diff
from .storage import TMP_PREFIX, Store

RUN_RECORD = "run.json"
SUMMARY = "summary.json"


class RunConfigMismatch(RuntimeError):
    """The output prefix belongs to a run with another configuration."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------------------- run record


def ensure_run_record(store: Store, identity: dict[str, Any], fingerprint: str, info: dict[str, Any]) -> bool:
    """Writes run.json if the output is new; refuses (RunConfigMismatch) if it holds a different run.

    Returns True when this call created the record.
    """
    if store.exists(RUN_RECORD):
        existing = json.loads(store.read_bytes(RUN_RECORD))
        if existing.get("run_fingerprint") != fingerprint:
            diff = identity_diff(existing.get("identity", {}), identity) or ["(identity not comparable)"]
            raise RunConfigMismatch(
                f"{store.url} already holds run {str(existing.get('run_fingerprint'))[:16]} with a different "
                f"configuration; refusing to mix runs. Differences (existing -> this command):\n  "
                + "\n  ".join(diff)
                + "\nUse a new --output for the new configuration, or repeat the original settings to resume.")
        return False
    record = {"run_fingerprint": fingerprint, "identity": identity, "created_at": now(), **info}
    store.write_atomic(RUN_RECORD, json.dumps(record, indent=2, sort_keys=True).encode())
    return True


# -------------------------------------------------------------------------------------------- commits


def commit_record(meta: dict[str, Any], run_fingerprint: str) -> dict[str, Any]:
    """The commit record of one unit, from the write stage's returned row."""
    return {
        "unit": meta["name"], "base": meta["unit"], "attempt": int(meta["attempt"]),
        "source_shard": meta["shard"], "index": int(meta["index"]), "last": bool(meta["last"]),
        "n_rows": int(meta["n_rows"]),
        # kept rows (--retry-errors) are the replaced attempt's ok rows: only error rows are redone
        "counts": {"ok": int(meta["ok"]) + int(meta["kept"]), "error": int(meta["error"])},
        "new": {"ok": int(meta["ok"]), "error": int(meta["error"]), "kept": int(meta["kept"])},
        "error_rows": json.loads(meta["error_rows"]), "error_kinds": json.loads(meta["error_kinds"]),
        "files": {"ledger": meta["ledger"], "shard": meta["tar"] or None},
        "replaces": meta["previous"] or None, "run_fingerprint": run_fingerprint,
        "ms": json.loads(meta["ms_json"]), "committed_at": now(),
        # the unit ends in a shard's unreadable rest (a cut-short upload): reopened by every later run
        "unreadable_tail": json.loads(meta["unreadable_tail"]) if meta.get("unreadable_tail") else None,
        "qa_failed": int(meta.get("qa_failed", 0)),  # ok rows outside the auto-QA bounds (status stays ok)
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
                "unit": rec["unit"], "attempt": rec["attempt"], "n_rows": rec["n_rows"], "last": rec["last"],
                "error_rows": rec["error_rows"], "unreadable_tail": rec.get("unreadable_tail"),
            }
        return out

    def totals(self) -> dict[str, int]:
        ok = sum(r["counts"]["ok"] for r in self.commits.values())
        err = sum(r["counts"]["error"] for r in self.commits.values())
        return {"rows": ok + err, "ok": ok, "error": err, "units": len(self.commits)}


def load_state(store: Store, threads: int = 16) -> OutputState:
    """Reads every commit record and lists the data folders: winning commits, stale commits, orphans."""
    listing = store.list("commits")
    names = [n[: -len(".json")] for n in listing if n.endswith(".json") and not n.startswith(TMP_PREFIX)]

    def read(name: str) -> dict[str, Any] | None:
        try:
            return json.loads(store.read_bytes(f"commits/{name}.json"))
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

    Lists the data folders only: the commit records are already in `state` (`commit_listing`, the names
    under commits/, saves listing that folder again when the caller has it).
    """
    live = {r["unit"] for r in state.commits.values()}
    orphans = []
    for folder, suffix in (("shards", ".tar"), ("ledger", ".parquet")):
        for name in store.list(folder):
            unit = name[: -len(suffix)] if name.endswith(suffix) else None
            if unit is None or unit not in live or name.startswith(TMP_PREFIX):
                orphans.append(f"{folder}/{name}")
    listing = store.list("commits") if commit_listing is None else commit_listing
    return orphans + [f"commits/{name}" for name in listing if name.startswith(TMP_PREFIX)]


def sweep(store: Store, state: OutputState, threads: int = 16) -> int:
    """Deletes stale commit records first (their files then are plain orphans), then orphan files."""
    stale_files = []
    for unit in state.stale_commits:
        store.delete(f"commits/{unit}.json")
        stale_files += [f"shards/{unit}.tar", f"ledger/{unit}.parquet"]
    paths = sorted(set(state.orphans) | set(stale_files))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(store.delete, paths))
    removed = len(state.orphans) + len(state.stale_commits)
    state.orphans, state.stale_commits = [], []
    return removed


# ------------------------------------------------------------------------------------------- reading


def read_ledger(output: str, endpoint_url: str | None = None, storage_options: dict | None = None):
    """The committed ledger of an output prefix as one pyarrow Table (winning commits only; orphans and
    superseded attempts are left out). Sorted by source shard and row index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .rows import ledger_schema

    store = Store.open(output, endpoint_url, storage_options)
    state = load_state(store)

    def read(rec: dict[str, Any]):
        with store.fs.open(store.path(rec["files"]["ledger"]), "rb") as f:
            return pq.read_table(f)

    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(read, state.commits.values()))
    if not tables:
        return ledger_schema().empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    return table.sort_by([("source_shard", "ascending"), ("row_index", "ascending")])
