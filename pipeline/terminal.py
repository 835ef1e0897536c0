"""What a person at a terminal sees during a job: status lines, one progress bar, then the summary.

    with terminal.session("edit", output=cfg.io.output, verbose=False) as term:
        summary = run_edit(cfg)          # calls terminal.status(...) and terminal.progress(...)
    print(format_summary(summary))       # after the bar is closed: it never shares a line with the bar

Without --verbose every log line of the process (Ray's INFO/WARNING lines, the C++ core worker's "E" lines,
Python warnings such as diffusers' float32 notes) goes to a log file, named on the first status line: the
driver's file descriptor 2 itself is pointed at the file, so even output that bypasses Python's logging
lands there. Status lines and the bar are written to the original terminal. Outside a session (library
use, tests) `status` logs at INFO and `progress` is the plain `pipeline.progress.Progress` line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

from pipeline.refusals import Refused

log = logging.getLogger("mgie_batch")


@dataclass
class Session:
    command: str
    stream: TextIO  # the terminal (the original stderr)
    log_path: str | None  # where the routed log lines go; None with --verbose
    verbose: bool
    bar: Any = None  # the live progress bar, while one is shown

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)  # above the bar, which is redrawn below it
        else:
            self.stream.write(line + "\n")
            self.stream.flush()


_current: Session | None = None


def current() -> Session | None:
    return _current


def verbose() -> bool:
    """Whether log lines may reach the terminal (no session, or --verbose)."""
    return _current is None or _current.verbose


def status(message: str) -> None:
    """One status line: `mgie-batch edit: loading model tiny`."""
    if _current is None:
        log.info(message)
    else:
        _current.write(f"mgie-batch {_current.command}: {message}")


def default_log_path(command: str, output: str | None) -> str:
    """`<output>/logs/` for a local output (next to the run it explains), else the temp folder."""
    from pipeline.layout import OutputLayout
    from pipeline.storage import is_local

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if output and is_local(output):
        folder = os.path.join(
            os.path.abspath(output[7:] if output.startswith("file://") else output), OutputLayout.LOGS
        )
    else:
        folder = os.path.join(tempfile.gettempdir(), "mgie-batch", "logs")
    return os.path.join(folder, f"{command}-{stamp}-{os.getpid()}.log")


@contextlib.contextmanager
def session(
    command: str, output: str | None = None, verbose: bool = False, log_path: str | None = None
) -> Iterator[Session]:
    """Status lines and the bar on the terminal; everything else into the log file unless `verbose`."""
    global _current
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        _current = Session(command, sys.stderr, None, True)
        try:
            yield _current
        finally:
            _close_bar(_current)
            _current = None
        return
    path = log_path or default_log_path(command, output)
    created = _missing_folders(os.path.dirname(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = os.fdopen(terminal_fd, "w", buffering=1, encoding="utf-8", errors="replace")
    log_file = open(path, "a", buffering=1, encoding="utf-8")
    os.dup2(log_file.fileno(), 2)  # C++ and other non-Python writers of fd 2 land in the log too
    root = logging.getLogger()
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved_level, saved_handlers = root.level, root.handlers[:]
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the py.warnings logger -> the file
    _current = Session(command, terminal, path, False)
    refused = False
    try:
        status(f"logs go to {path} (--verbose shows them here)")
        yield _current
    except Refused:
        refused = True
        raise
    finally:
        _close_bar(_current)
        _current = None
        logging.captureWarnings(False)
        root.handlers, root.level = saved_handlers, saved_level
        sys.stderr.flush()
        os.dup2(terminal_fd, 2)  # errors and tracebacks after the session reach the terminal again
        terminal.close()
        log_file.close()
        if refused:  # its one line says it all; a refused run leaves nothing, not even an output's logs/
            _remove(path, created)


def _missing_folders(folder: str) -> list[str]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    out: list[str] = []
    while folder and not os.path.exists(folder):
        out.append(folder)
        parent = os.path.dirname(folder)
        folder = "" if parent == folder else parent
    return out


def _remove(path: str, folders: list[str]) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
    for folder in folders:  # only what the session made, and only while empty (another run may log there)
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _close_bar(s: Session | None) -> None:
    if s is not None and s.bar is not None:
        bar, s.bar = s.bar, None
        bar.close()


def progress(n_shards: int, total_rows: int | None, enabled: bool = True):
    """The job's progress display: a tqdm bar on a terminal inside a session, else the plain line."""
    from pipeline.progress import Progress

    s = _current
    if not enabled or s is None or not (hasattr(s.stream, "isatty") and s.stream.isatty()):
        return Progress(n_shards, enabled=enabled, stream=s.stream if s is not None else None)
    return BarProgress(s, n_shards, total_rows)


class BarProgress:
    """One tqdm bar: rows done / total (%), the rate over the last minute and the ETA from it, ok/error/
    skipped, and units through each stage (from Ray Data's own counters, when it shares them).

    The total is exact when the plan knows every source's rows (manifests, folders); with tar shards it is
    estimated from the shards finished so far, as the plain line does."""

    WINDOW_S = 60.0

    def __init__(self, s: Session, n_shards: int, total_rows: int | None, stage_counts: Callable | None = None):
        from tqdm import tqdm

        self.session, self.n_shards, self.exact_total = s, n_shards, total_rows
        self.ok = self.error = self.skipped = 0
        self.shard_rows: dict[str, int] = {}
        self.shard_units: dict[str, set[int]] = {}
        self.shard_last: dict[str, int] = {}
        # (time, rows processed) at each commit; the first commit is the base, so Ray's start-up and the model
        # loading before it do not drag the rate (and the ETA) down for the first minutes
        self.samples: deque[tuple[float, int]] = deque()
        self.stage_counts = stage_counts or ray_data_stage_counts
        self.stages = ""
        self.lock = threading.Lock()
        self.bar = tqdm(
            total=total_rows,
            file=s.stream,
            unit="row",
            dynamic_ncols=True,
            leave=True,
            bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {postfix}",
            desc="edit ",
        )
        s.bar = self.bar
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="progress-bar", daemon=True)
        self.ticker.start()

    @property
    def done(self) -> int:
        return self.ok + self.error + self.skipped

    def update(self, shard: str, index: int, last: bool, n_rows: int, ok: int, error: int, skipped: int) -> None:
        with self.lock:
            self.ok, self.error, self.skipped = self.ok + ok, self.error + error, self.skipped + skipped
            self.shard_rows[shard] = self.shard_rows.get(shard, 0) + n_rows
            self.shard_units.setdefault(shard, set()).add(index)
            if last:
                self.shard_last[shard] = index
            if ok + error:
                self.samples.append((time.monotonic(), self.ok + self.error))
            self._redraw()

    def rate(self) -> float:
        """Rows processed per second since the last point at least a minute back (skipped rows cost nothing and
        do not count); units commit in steps, so a window with no point at its start would read zero."""
        now = time.monotonic()
        while len(self.samples) > 1 and now - self.samples[1][0] > self.WINDOW_S:
            self.samples.popleft()
        if not self.samples:
            return 0.0
        t0, n0 = self.samples[0]
        processed = self.ok + self.error
        return (processed - n0) / (now - t0) if now > t0 else 0.0

    def total(self) -> int | None:
        if self.exact_total is not None:
            return self.exact_total
        finished = [s for s in self.shard_last if len(self.shard_units[s]) == self.shard_last[s] + 1]
        if not finished:
            return None
        per_shard = sum(self.shard_rows[s] for s in finished) / len(finished)
        return max(self.done, round(per_shard * self.n_shards))

    def _redraw(self) -> None:
        total, rate = self.total(), self.rate()
        eta = _duration((total - self.done) / rate) if total is not None and rate > 0 else "?"
        self.bar.total = total
        self.bar.n = self.done
        estimate = "" if self.exact_total is not None or total is None else " (estimated total)"
        self.bar.set_postfix_str(
            f"{rate:.2f} rows/s (1 min) | ETA {eta} | ok {self.ok}, error {self.error}, "
            f"skipped {self.skipped}{estimate}{self.stages}",
            refresh=False,
        )
        self.bar.refresh()

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            try:
                counts = self.stage_counts()
            except Exception:  # noqa: BLE001 - the counters are a nicety; the bar goes on without them
                counts = None
            with self.lock:
                if counts:
                    self.stages = " | units " + " ".join(f"{k} {v}" for k, v in counts.items())
                self._redraw()

    def close(self) -> None:
        self.stop.set()
        self.ticker.join(timeout=5)
        with self.lock:
            self._redraw()
        _close_bar(self.session)


# Ray Data operator names -> our stage names; the first match wins (ExpressEditStage before ExpressStage)
_STAGES = (
    ("read_shard", "read"),
    ("decode_unit", "decode"),
    ("ExpressEditStage", "express+edit"),
    ("ExpressStage", "express"),
    ("EditStage", "edit"),
    ("write_unit", "write"),
)


def stage_name(operator: str) -> str | None:
    """`Map(read_shard)->Map(decode_unit)_1` -> `read+decode`; None for operators that are not ours."""
    names = [next((name for pattern, name in _STAGES if pattern in part), None) for part in operator.split("->")]
    names = [n for n in names if n]
    return "+".join(names) or None


def ray_data_stage_counts() -> dict[str, int] | None:
    """Blocks (one unit each) each operator of this job's dataset has output, from Ray Data's stats actor;
    None when it is not there (another Ray version, no dataset yet)."""
    # Never import Ray Data from this thread while the job's thread may be importing it: two threads importing
    # one package can each see the other's half-initialised modules (an ImportError in the job). Until the
    # job has imported it completely there is no dataset to count anyway.
    data = sys.modules.get("ray.data")
    if data is None or getattr(getattr(data, "__spec__", None), "_initializing", False):
        return None
    import ray

    from pipeline.ray_internals import stats_actor

    name, namespace = stats_actor()
    actor = ray.get_actor(name, namespace=namespace)
    datasets = ray.get(actor.get_datasets.remote(ray.get_runtime_context().get_job_id()), timeout=2)
    if not datasets:
        return None
    latest = max(datasets.values(), key=lambda d: d.get("start_time") or 0)
    counts = {stage_name(op): int(st.get("progress", 0)) for op, st in latest.get("operators", {}).items()}
    counts.pop(None, None)
    return counts or None


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
