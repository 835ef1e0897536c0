"""The commit side of a run, all in the driver: which shards still have work, the committer, the orphan sweeps.

    state = load_state(store)
    removed = sweep_left_behind(store, state)                  # what a crashed run left: orphans, stale commits
    items = pending_shards(shards, identities, state, retry_errors, tally, progress)  # finished ones counted
    complete = commit_units(units, Committer(store, state, fingerprint, lease), tally, progress, limit)
    if complete:
        sweep_debris(store, state)                             # temporaries of writes that died

A unit exists from the moment its commit record does; the driver alone writes commit records, after the
unit's files (docs/pipeline.md has the protocol and why each step is safe to crash in).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline import faults
from pipeline.layout import OutputLayout
from pipeline.lease import Lease
from pipeline.ledger import OutputState, commit_record, find_orphans, sweep
from pipeline.read_stage import shard_done
from pipeline.shard_identity import ShardIdentity
from pipeline.storage import Store
from pipeline.unit_record import WrittenUnit

log = logging.getLogger("mgie_batch.edit")


@dataclass
class CommitTally:
    """What the run did with each unit it saw: the counts of its summary."""

    ok: int = 0
    error: int = 0
    skipped: int = 0  # rows already done: whole units skipped, and the kept rows of a --retry-errors unit
    units_committed: int = 0
    units_skipped: int = 0
    orphans_removed: int = 0  # at the start: what a crashed run left behind
    duplicates: int = 0  # units delivered twice (a retried task): committed once, the rest ignored
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "express", "edit", "encode", "cpu_decode", "cpu_encode"), 0.0)
    )
    first_commit_at: float | None = None  # time.monotonic() of this run's first commit: where start-up ends

    @property
    def processed(self) -> int:
        return self.ok + self.error

    def counts(self) -> dict[str, int]:
        return {
            "ok": self.ok,
            "error": self.error,
            "skipped": self.skipped,
            "units_committed": self.units_committed,
            "units_skipped": self.units_skipped,
        }

    def skip(self, n_rows: int) -> None:
        self.skipped += n_rows
        self.units_skipped += 1

    def add(self, rec: dict[str, Any]) -> None:
        if self.first_commit_at is None:
            self.first_commit_at = time.monotonic()
        self.ok += rec["new"]["ok"]
        self.error += rec["new"]["error"]
        self.skipped += rec["new"]["kept"]
        self.units_committed += 1
        for k, v in rec["error_kinds"].items():
            self.errors_by_kind[k] = self.errors_by_kind.get(k, 0) + v
        for k, v in rec["ms"].items():
            self.stage_ms[k] = self.stage_ms.get(k, 0.0) + v


def sweep_left_behind(store: Store, state: OutputState) -> int:
    """Deletes what a crashed run left (orphan files, superseded commit records) before new units are
    written; -> how many."""
    removed = sweep(store, state)
    if removed:
        log.info("removed %d orphan files / stale commit records", removed)
    return removed


def sweep_debris(store: Store, state: OutputState) -> None:
    """After the last commit: every file no commit names is debris (a temporary of a write that died). Only
    when every unit was committed: after --limit such files may be units still in flight, left for the next
    run's `sweep_left_behind`."""
    state.orphans = find_orphans(store, state)
    sweep(store, state)


def pending_shards(
    shards: list[str],
    identities: dict[str, ShardIdentity],
    state: OutputState,
    retry_errors: bool,
    tally: CommitTally,
    progress,
) -> list[dict[str, Any]]:
    """The read stage's items: one per shard with work left, with its committed units. A finished shard is
    counted here as skipped instead of being sent through the cluster."""
    committed = state.committed_for_shard()
    items = []
    for shard in shards:
        units = committed.get(shard, {})
        if shard_done(units, retry_errors):
            for index, u in sorted(units.items()):
                tally.skip(u["n_rows"])
                progress.update(shard, index, u["last"], u["n_rows"], 0, 0, u["n_rows"])
        else:
            items.append({"shard": shard, "size": identities[shard].size, "committed": json.dumps(units)})
    return items


class Committer:
    """The only writer of commit records. Dedupes: a unit base is committed at most once per attempt."""

    def __init__(self, store: Store, state: OutputState, fingerprint: str, lease: Lease | None = None):
        self.store, self.state, self.fingerprint, self.lease = store, state, fingerprint, lease
        self.layout = OutputLayout(store.url)
        self.written = 0
        self.duplicates = 0

    def commit(self, unit: WrittenUnit) -> dict[str, Any] | None:
        base, attempt = unit.unit, unit.attempt
        current = self.state.commits.get(base)
        if current is not None and current["attempt"] >= attempt:
            # delivered twice (a retried task whose first result also arrived): the files have the same
            # deterministic names and content, so there is nothing to undo; never commit twice
            self.duplicates += 1
            log.warning("unit %s (attempt %d) is already committed; ignoring the duplicate", base, attempt)
            return None
        faults.maybe_kill("kill_before_commit", self.written + 1)
        if self.lease is not None:
            self.lease.ensure_held()  # a driver whose lease was taken over commits nothing more
        rec = commit_record(unit, self.fingerprint)
        self.store.write_atomic(self.layout.commit(rec["unit"]), json.dumps(rec, sort_keys=True).encode())
        self.written += 1
        faults.maybe_kill("kill_after_commit", self.written)
        self.state.commits[base] = rec
        old = rec["replaces"]
        if old and old != rec["unit"]:
            # the new attempt is visible; the old one is now stale. Record first, then its files: a crash in
            # between leaves plain orphans, which the next run removes.
            self.store.delete(self.layout.commit(old))
            for path in self.layout.unit_files(old):
                self.store.delete(path)
        return rec


def commit_units(
    units: Iterator[dict[str, Any]], committer: Committer, tally: CommitTally, progress, limit: int | None
) -> bool:
    """Commits the written units as they arrive; -> whether every unit was (False: stopped at --limit)."""
    complete = True
    for row in units:
        unit = WrittenUnit.from_row(row)
        if unit.skip:
            tally.skip(unit.n_rows)
            progress.update(unit.shard, unit.index, unit.last, unit.n_rows, 0, 0, unit.n_rows)
            continue
        rec = committer.commit(unit)
        if rec is None:
            continue
        tally.add(rec)
        progress.update(unit.shard, unit.index, unit.last, unit.n_rows, unit.ok, unit.error, unit.kept)
        if limit is not None and tally.processed >= limit:
            complete = False
            if hasattr(units, "close"):
                units.close()  # stops the streaming executor now; units it had in flight stay uncommitted orphans
            break
    tally.duplicates = committer.duplicates
    return complete
