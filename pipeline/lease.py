"""One driver per output prefix: a lease object (`OutputLayout.LEASE`), held for the whole run.

Two drivers on one output would sweep each other's in-flight files as orphans and commit the same units.
The lease says who holds the output (owner token, host, pid, heartbeat time). A driver takes it before it
writes anything (run record, input identities, the sweep), refreshes it while it runs, and deletes it at the end.

    lease = Lease(store, timeout_s=300)
    lease.acquire()          # LeaseHeld if a live driver holds it
    lease.start_heartbeat()
    ...                      # lease.ensure_held() before each commit record
    lease.release()

    with Lease(store, timeout_s=300).held() as lease:    # the same four steps, released on any way out
        ...

Writes are conditional where the store can do it, so two drivers racing for the lease never both win:
S3 `If-None-Match: *` to create, `If-Match: <etag>` to refresh or take over a stale lease; a local file is
created by hard-linking a fully written file into place (which fails if the name exists; where hard links
are refused, with O_EXCL and then its body) and taken over by an atomic rename. A store with neither (another
fsspec backend) gets write-then-read-back: it catches a driver that comes later, not two that write at the
same instant.

A lease is stale when its heartbeat is older than `timeout_s` by the reading driver's clock (clock skew
between hosts must stay well under the timeout), or at once when it names a process on this host that is
gone (a driver killed here, rerun here).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Iterator

from pipeline.layout import OutputLayout
from pipeline.refusals import Refused
from pipeline.storage import Store, is_local

LEASE = OutputLayout.LEASE
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
DEFAULT_TIMEOUT_S = 300.0
log = logging.getLogger("mgie_batch.lease")
_HELD_HERE: set[str] = set()  # owner tokens of the leases this process holds right now


class LeaseHeld(Refused, RuntimeError):
    """Another live driver holds the output prefix."""


class LeaseLost(Refused, RuntimeError):
    """This driver's lease was taken over (it looked stale to another driver): stop before committing more."""


@dataclass(frozen=True)
class Holder:
    owner: str  # random token of one driver run
    host: str
    pid: int
    acquired_at: str
    heartbeat_at: float  # unix time by the holder's clock
    timeout_s: float

    def age(self) -> float:
        return time.time() - self.heartbeat_at

    def process_gone(self) -> bool:
        """The holder ran on this host and its process no longer exists (or is a zombie), or it is this very
        process, which no longer holds that lease (an earlier run here could not delete it)."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.owner not in _HELD_HERE
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return False

    def stale(self, timeout_s: float) -> bool:
        return self.age() > timeout_s or self.process_gone()

    def describe(self) -> str:
        return (
            f"driver {self.owner[:8]} on host {self.host}, pid {self.pid}, since {self.acquired_at}, last "
            f"heartbeat {self.age():.0f} s ago"
        )


def _precondition_failed(e: OSError) -> bool:
    return isinstance(e, FileExistsError) or "pre-condition" in str(e) or e.errno == errno.EEXIST


class Lease:
    def __init__(self, store: Store, timeout_s: float = DEFAULT_TIMEOUT_S, heartbeat_s: float | None = None):
        if timeout_s <= 0:
            raise ValueError(f"--lease-timeout must be > 0 seconds, got {timeout_s}")
        self.store, self.timeout_s = store, float(timeout_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(30.0, self.timeout_s / 4)
        self.holder: Holder | None = None
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------- protocol

    def acquire(self) -> None:
        """Takes the lease, or raises LeaseHeld naming the live holder and how to take over."""
        me = self._new_holder()
        _HELD_HERE.add(me.owner)  # before it can be seen: this process's own lease never looks abandoned
        try:
            self._acquire_as(me)
        except BaseException:
            _HELD_HERE.discard(me.owner)
            raise
        self.holder = me

    def _acquire_as(self, me: Holder) -> None:
        if self._create(me):
            return
        current = self.read()
        if current is None:  # released between our create and our read: try once more
            if self._create(me):
                return
            current = self.read()
        if current is not None and not current.stale(self.timeout_s):
            raise LeaseHeld(self._held_message(current))
        if current is not None and self._take_over(current, me):
            log.warning("took over the stale lease of %s", current.describe())
            return
        raise LeaseHeld(self._held_message(self.read() or current))

    @contextlib.contextmanager
    def held(self) -> Iterator["Lease"]:
        """Acquired and beating inside the block; released on the way out, an error's way included."""
        self.acquire()
        try:
            self.start_heartbeat()
            yield self
        finally:
            self.release()

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def ensure_held(self) -> None:
        if self._lost:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        """Stops the heartbeat and deletes the lease if it is still ours. Never raises: it runs on the way out
        of a failed run too, whose own error must reach the user (a store refusing writes refuses this delete
        as well); a lease left behind goes stale, or is taken over at once by a rerun on this host."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.holder is None:
            return
        _HELD_HERE.discard(self.holder.owner)
        try:
            current = self.read()
            if current is not None and current.owner == self.holder.owner:
                self.store.delete(LEASE)
        except OSError as e:
            log.warning(
                "could not release the lease %s/%s (%s); it goes stale after %.0f s",
                self.store.url,
                LEASE,
                e,
                self.timeout_s,
            )
        self.holder = None

    def read(self) -> Holder | None:
        try:
            return _parse(self.store.read_bytes(LEASE))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------------------------------ details

    def _new_holder(self) -> Holder:
        return Holder(
            uuid.uuid4().hex,
            socket.gethostname(),
            os.getpid(),
            _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            time.time(),
            self.timeout_s,
        )

    def _held_message(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "another driver"
        wait = max(0.0, self.timeout_s - holder.age()) if holder else self.timeout_s
        return (
            f"{self.store.url} is in use by {who}; one driver per output. If that driver is gone, run again "
            f"after its lease goes stale (in {wait:.0f} s; --lease-timeout {self.timeout_s:.0f}), or delete "
            f"{self.store.url}/{LEASE} once you are sure it has stopped."
        )

    def _body(self, holder: Holder) -> bytes:
        return json.dumps(asdict(holder), sort_keys=True).encode()

    def _create(self, holder: Holder) -> bool:
        """Conditional create: True if the lease did not exist and is now ours."""
        if is_local(self.store.url):
            path = self.store.path(LEASE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Written in full aside, then linked in: a link fails if the name exists, like O_EXCL, but the
            # lease appears with its whole body, so a racing reader never sees an empty (unreadable, hence
            # "stale") file and takes it over.
            aside = f"{path}.{holder.owner}.new"
            self._write_durably(os.open(aside, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644), holder)
            try:
                os.link(aside, path)
            except FileExistsError:
                return False
            except OSError as e:  # a file system without hard links (exFAT, some network mounts)
                if e.errno not in _NO_HARD_LINKS:
                    raise
                return self._create_exclusive_in_place(path, holder)
            finally:
                os.unlink(aside)
            return True
        try:
            out = self.store.fs.pipe_file(self.store.path(LEASE), self._body(holder), mode="create")
        except OSError as e:
            if _precondition_failed(e):
                return False
            raise
        except TypeError:  # a store without exclusive create: write, then see whose lease is there
            if self.read() is not None:
                return False
            self.store.write_atomic(LEASE, self._body(holder))
            return (self.read() or holder).owner == holder.owner
        self._etag = _etag_of(out)
        return True

    def _create_exclusive_in_place(self, path: str, holder: Holder) -> bool:
        """O_EXCL, then the body: exclusive, but a racer may read the file empty in between and take it for a
        stale lease. Only where hard links are refused."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        self._write_durably(fd, holder)
        return True

    def _write_durably(self, fd: int, holder: Holder) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(self._body(holder))
            f.flush()
            os.fsync(f.fileno())

    def _replace(self, expected: Holder, new: Holder) -> bool:
        """Conditional overwrite of `expected` (our own lease, or a stale one) with `new`."""
        if is_local(self.store.url) and expected.owner == new.owner:  # our heartbeat: checked by _refresh
            self.store.write_atomic(LEASE, self._body(new))
            return True
        if is_local(self.store.url):
            path = self.store.path(LEASE)
            aside = f"{path}.{new.owner}"
            try:
                os.rename(path, aside)  # atomic: of two drivers, one gets the file
            except FileNotFoundError:
                return False
            with open(aside, "rb") as f:
                seen = _parse(f.read())
            if seen != expected:  # it changed since we looked: put it back, we lost
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                os.unlink(aside)
                return False
            os.unlink(aside)
            return self._create(new)
        if self._etag is None or expected.owner != (self.holder.owner if self.holder else None):
            info = self.store.fs.info(self.store.path(LEASE))
            etag = info.get("ETag")
            if self.read() != expected:
                return False
        else:
            etag = self._etag
        try:
            out = self.store.fs.pipe_file(self.store.path(LEASE), self._body(new), IfMatch=etag)
        except OSError as e:
            if _precondition_failed(e):
                return False
            raise
        self._etag = _etag_of(out)
        return True

    def _take_over(self, stale: Holder, me: Holder) -> bool:
        return self._replace(stale, me)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._refresh()
            except OSError as e:  # a store hiccup: the next beat tries again, well within the timeout
                log.warning("lease heartbeat failed (will retry): %s", e)

    def _refresh(self) -> None:
        assert self.holder is not None
        current = self.read()
        if current is None or current.owner != self.holder.owner:
            self._lost = (
                f"the lease on {self.store.url} was taken over by "
                f"{current.describe() if current else 'nobody (deleted)'}; this driver stops without "
                f"committing more. Run one driver per output."
            )
            self._stop.set()
            return
        fresh = Holder(**{**asdict(self.holder), "heartbeat_at": time.time()})
        if self._replace(self.holder, fresh):
            self.holder = fresh


def _parse(data: bytes) -> Holder:
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):  # a torn or foreign file: a holder long gone
        return Holder("unreadable", "?", -1, "?", 0.0, 0.0)


def _etag_of(put_response) -> str | None:
    return put_response.get("ETag") if isinstance(put_response, dict) else None
