"""Fault injection for testing the commit protocol and the error paths; inert unless MGIE_BATCH_FAULTS is set.

    MGIE_BATCH_FAULTS="express.fail=k1|k2;write.sleep=0.2;driver.kill_before_commit=3"

    <stage>.fail=KEYS             rows with these keys raise a (transient-looking) error in express or edit
    <stage>.crash=KEYS            the worker SIGKILLs itself at these rows (decode, express, edit, write)
    <stage>.hang=KEYS             the worker sleeps for ever at these rows (decode, express, edit, write)
    <stage>.sleep=SECONDS         each unit waits in express, edit or write, so a run can be caught mid-way
    store.enospc=N                the N-th local atomic write of a process fails as on a full disk
    driver.kill_before_commit=N   the driver SIGKILLs itself once unit N's files exist, before its commit
    driver.kill_after_commit=N    the driver SIGKILLs itself right after writing the N-th commit record

The driver reads the variable and hands the spec to every stage explicitly: Ray workers do not inherit a
driver's environment.
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "MGIE_BATCH_FAULTS"
_spec: dict[str, str] = {}


def from_env() -> str:
    return os.environ.get(ENV, "")


def configure(spec: str) -> None:
    global _spec
    _spec = dict(item.split("=", 1) for item in spec.split(";") if "=" in item)


def maybe_fail(stage: str, key: str) -> None:
    keys = _spec.get(f"{stage}.fail")
    if keys and key in keys.split("|"):
        # ValueError: the stage turns it into this row's error, as it does for a bad input
        raise ValueError(f"injected fault in {stage} for row {key!r}")


def maybe_crash_or_hang(stage: str, key: str) -> None:
    """A row that kills its worker every time (a decoder crash, an out-of-memory kill) or hangs it."""
    if key in (_spec.get(f"{stage}.crash") or "").split("|"):
        os.kill(os.getpid(), signal.SIGKILL)
    if key in (_spec.get(f"{stage}.hang") or "").split("|"):
        while True:
            time.sleep(3600)


def maybe_sleep(stage: str) -> None:
    seconds = _spec.get(f"{stage}.sleep")
    if seconds:
        time.sleep(float(seconds))


def maybe_kill(point: str, count: int) -> None:
    """SIGKILL this process when `point` is reached for the N-th time: no cleanup, no finally blocks."""
    n = _spec.get(f"driver.{point}")
    if n and count == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


_writes = 0


def maybe_fill_disk() -> None:
    """Raise ENOSPC on the N-th local atomic write (`store.enospc=N`), after its temp file has bytes."""
    global _writes
    n = _spec.get("store.enospc")
    if n:
        _writes += 1
        if _writes == int(n):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
