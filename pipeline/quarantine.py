"""Quarantine of the rows that kill or hang their worker.

Ray retries a task or restarts an actor whose process died, for ever: one row that crashes its decoder (or
drives its worker out of memory, or faults the GPU) each time it is processed would keep the whole job
from finishing. So each stage keeps, per unit, a small durable record under the output prefix
(`OutputLayout.attempt`) of the times a worker started the unit without finishing it:

    {"starts": 3, "in_hand": {"<key>": 1}}

- A start is recorded before the unit's rows are processed; a finished unit deletes its record. A record
  found at the start therefore counts the worker deaths on this unit so far, across retries, restarts and
  driver runs (a crashed driver's successor reads the same record).
- After `deaths_allowed` deaths the unit is redone one row at a time, each row recorded as in hand before it
  is processed. A row found in hand was being processed when the worker died: it becomes an error row of
  this stage ("the worker died processing this row N times") and is not processed again; every other row is
  processed as usual, so the unit still commits exactly once. `--retry-errors` tries the row again.
- A row or unit past the deadline (`unit_timeout_s`) is treated as a crash: a watchdog SIGKILLs the worker,
  whose retry then counts it like any other death. A hang thus ends as an error row too.

Processing rows one at a time changes the batches the other rows of a quarantined unit meet the model in;
their pixels can differ in the last bits from an unquarantined run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from pipeline.layout import OutputLayout
from pipeline.rows import PENDING, fail
from pipeline.settings import setting

DEFAULT_DEATHS_ALLOWED = 2


@dataclass(frozen=True)
class QuarantineSettings:
    """Rows that kill or hang their workers; not in the fingerprint."""

    deaths_allowed: int = setting(
        DEFAULT_DEATHS_ALLOWED,
        flag="--quarantine-after",
        metavar="N",
        help="worker deaths (crash, out of memory, --unit-timeout) on one unit before its rows are redone one at "
        "a time and the row that kills the worker becomes an error row",
    )
    unit_timeout_s: float = setting(
        0.0,
        flag="--unit-timeout",
        metavar="SECONDS",
        help="seconds one stage may spend on a unit (on one row, in a quarantined unit); past it the worker is "
        "killed and counted as a crash. 0 = auto: 900 + 3 per row per 20 steps",
    )

    def __post_init__(self):
        if self.deaths_allowed < 1:
            raise ValueError(f"--quarantine-after {self.deaths_allowed}: must be at least 1")
        if self.unit_timeout_s < 0:
            raise ValueError(f"--unit-timeout {self.unit_timeout_s:g}: must be positive (0 = auto)")

    def deadline_s(self, unit_rows: int, steps: int) -> float:
        """The deadline a unit gets: the one set, else 15 minutes plus 3 s per row and 20 diffusion steps (a
        7B row at 20 steps takes well under a second on a GPU: only a hang reaches it)."""
        if self.unit_timeout_s:
            return self.unit_timeout_s
        return 900.0 + 3.0 * unit_rows * max(1, steps) / 20.0


@dataclass(frozen=True)
class UnitGuardSettings:
    """What a stage's worker needs to keep its units' records: the output and the two limits."""

    output_url: str
    output_options: dict
    deaths_allowed: int
    deadline_s: float


def guarded_unit(row: dict[str, Any], settings: UnitGuardSettings | None) -> str:
    """The unit name a stage's record is kept under (rows made by hand in tests may have none: no guard)."""
    from pipeline.read_stage import unit_name

    return unit_name(row["unit"], row["attempt"]) if settings is not None else ""


class UnitGuard:
    """One stage's processing of one unit, with its durable record of worker deaths (module docstring).

    with UnitGuard(settings, "decode", unit) as guard:
        for rows in guard.batches(samples):    # all pending rows, or one row at a time when quarantined
            process(rows)
    """

    def __init__(self, settings: UnitGuardSettings | None, stage: str, unit: str):
        self.settings, self.stage, self.unit = settings, stage, unit
        self.record: dict[str, Any] = {"starts": 0, "in_hand": {}}
        self.deaths = 0  # starts of this unit in this stage that never finished: the worker died in them
        self._store = None
        self._timer: threading.Timer | None = None

    @property
    def quarantined(self) -> bool:
        return self.settings is not None and self.deaths >= self.settings.deaths_allowed

    def __enter__(self) -> UnitGuard:
        if self.settings is None:
            return self
        from pipeline.storage import Store

        self._store = Store(self.settings.output_url, self.settings.output_options)
        self._rel = OutputLayout(self._store.url).attempt(self.stage, self.unit)
        try:  # one request: most units have no record
            self.record = json.loads(self._store.read_bytes(self._rel))
        except FileNotFoundError:
            pass
        self.deaths = int(self.record["starts"])
        self._save(starts=self.deaths + 1)
        return self

    def __exit__(self, *exc) -> None:
        self._disarm()
        if self._store is not None:
            # finished, or failed with an exception the job reports: either way no death to remember
            self._store.delete(self._rel)

    def batches(self, samples: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """The pending rows in one batch; in a quarantined unit, one row at a time, recorded in hand, with
        the rows that were in hand at a death failed instead."""
        pending = [s for s in samples if s["status"] == PENDING]
        if not pending:
            return
        if not self.quarantined:
            self._arm()
            yield pending
            self._disarm()
            return
        in_hand: dict[str, int] = self.record["in_hand"]
        for s in pending:
            if s["key"] in in_hand:
                # the deaths with this row in hand: those with the whole unit in hand, then its own
                times = self.settings.deaths_allowed + in_hand[s["key"]]
                fail(
                    s,
                    self.stage,
                    f"the worker died processing this row {times} times (killed, crashed or past "
                    "--unit-timeout); --retry-errors tries it again",
                )
                continue
            self._save(in_hand={**in_hand, s["key"]: 1})
            self._arm()
            yield [s]
            self._disarm()
        self._save(in_hand={})

    def _save(self, **changes: Any) -> None:
        self.record.update(changes)
        if self._store is not None:
            self._store.write_atomic(self._rel, json.dumps(self.record, sort_keys=True).encode())

    def _arm(self) -> None:
        if self.settings is None or self.settings.deadline_s <= 0:
            return
        # a hung row never returns to Python code that could notice: only the process's end frees its worker
        self._timer = threading.Timer(self.settings.deadline_s, os.kill, (os.getpid(), signal.SIGKILL))
        self._timer.daemon = True
        self._timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
