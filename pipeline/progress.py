"""A live progress line for the driver: rows done, rows/s and ETA, shards done.

On a terminal the line redraws in place; in a log (Kubernetes, CI) it prints a plain line every
`log_every` seconds. The total is estimated from the shards finished so far (a shard's row count is known
once its last unit arrives).
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, n_shards: int, enabled: bool = True, stream=None, log_every: float = 10.0):
        self.n_shards = n_shards
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = 2.0 if self.tty else log_every
        self.start = time.monotonic()
        self.last_print = 0.0
        self.processed = self.ok = self.error = self.skipped = 0
        self.shard_rows: dict[str, int] = {}  # rows per shard so far
        self.shard_units: dict[str, set[int]] = {}
        self.shard_last: dict[str, int] = {}  # index of the last unit, once seen

    def update(self, shard: str, index: int, last: bool, n_rows: int, ok: int, error: int, skipped: int) -> None:
        self.ok += ok
        self.error += error
        self.skipped += skipped
        self.processed += ok + error
        self.shard_rows[shard] = self.shard_rows.get(shard, 0) + n_rows
        self.shard_units.setdefault(shard, set()).add(index)
        if last:
            self.shard_last[shard] = index
        self.maybe_print()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.processed / elapsed if elapsed > 0 else 0.0
        done_rows = self.ok + self.error + self.skipped
        finished = [s for s in self.shard_last if len(self.shard_units[s]) == self.shard_last[s] + 1]
        eta = "?"
        if finished and rate > 0:
            per_shard = sum(self.shard_rows[s] for s in finished) / len(finished)
            remaining = max(0.0, per_shard * self.n_shards - done_rows)
            eta = _duration(remaining / rate)
        return (
            f"edit: {done_rows} rows (ok {self.ok}, error {self.error}, skipped {self.skipped}) | "
            f"{rate:.2f} rows/s | shards {len(finished)}/{self.n_shards} | ETA {eta} | "
            f"{_duration(elapsed)} elapsed"
        )

    def maybe_print(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last_print < self.log_every:
            return
        self.last_print = now
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.maybe_print(force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
