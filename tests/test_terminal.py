"""What a person at a terminal sees: status lines from the first seconds, one bar, a summary on its own lines,
and none of Ray's, the workers' or the libraries' log lines (they go to the log file the first line names)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import terminal

ROOT = Path(__file__).resolve().parent.parent

# what the log lines we keep off the terminal look like
LOG_LINE = re.compile(
    r"\b(INFO|WARNING|WARN|DEBUG)\b|core_worker|\(MapWorker|\(pid=|raylet|diffusers|"
    r"Warning:|Traceback|^\[?\d{4}-\d\d-\d\d",
    re.MULTILINE,
)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, list[tuple[float, bytes]]]:
    """Runs argv with a pseudo-terminal as stdin/stdout/stderr; returns its exit status and what it wrote,
    with the seconds since start at which each chunk arrived."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True)
    os.close(slave)
    chunks: list[tuple[float, bytes]] = []
    try:
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append((time.monotonic() - t0, data))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, chunks


@pytest.mark.slow
def test_terminal_shows_status_lines_at_once_then_a_bar_and_a_summary_and_no_log_lines(s3, ray_local, tmp_path):
    bucket = s3.new_bucket("tty")
    for i in range(6):
        s3.client().put_object(Bucket=bucket, Key=f"photos/p{i}.png", Body=_png(i))
    output = f"s3://{bucket}/out"
    argv = [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--input",
        f"s3://{bucket}/photos",
        "--output",
        output,
        "--instruction",
        "make it brighter",
        "--model",
        "tiny",
        "--unit-rows",
        "2",
        "--resources",
        "auto",
    ]
    env = {
        **os.environ,
        **ray_local.env(),
        "PYTHONPATH": str(ROOT),
        "TERM": "xterm",
        "COLUMNS": "200",
        "TMPDIR": str(tmp_path),
    }
    rc, chunks = _run_in_pty(argv, env)
    text = b"".join(c for _, c in chunks).decode("utf-8", "replace")
    assert rc == 0, text[-3000:]

    # at once: written, and read from the terminal, before the model is loaded, however loaded the machine is
    # (a wall-clock bound failed on a busy CI machine: 6.4 s there for what takes under 3 s on an idle one)
    first = next(i for i, (_, c) in enumerate(chunks) if b"mgie-batch edit:" in c)
    loading = next(i for i, (_, c) in enumerate(chunks) if b"loading model" in c)
    assert first < loading, f"the first status line came with the model's: {chunks[first][1][:200]!r}"
    for expected in (
        "logs go to",
        "reading the input list",
        "loading model tiny",
        "planning 1 source (1 folder) / 6 rows, 0 rows already done",
        "attaching to Ray at",
    ):
        assert expected in text, f"no status line with {expected!r}:\n{text[-3000:]}"
    # `--resources auto`: the precision check asks the cluster for its GPUs before the plan runs on it; the run
    # reaches Ray once and says so once
    assert text.count("attaching to Ray at") == 1 and "using the Ray instance" not in text, text[-3000:]
    assert "rows/s (1 min)" in text and "ETA" in text, "no progress bar"
    assert not LOG_LINE.search(text), f"a log line reached the terminal: {LOG_LINE.search(text).group(0)!r}\n{text}"

    lines = text.replace("\r\n", "\n").split("\n")
    summary = [i for i, line in enumerate(lines) if line.startswith("output") or "output     " in line]
    assert len(summary) == 1 and lines[summary[0]] == f"output     {output}", lines[summary[0] - 1 : summary[0] + 2]
    assert lines[summary[0] + 1].startswith("rows read  6 = ok 6 + error 0 + skipped (already done) 0")

    log_path = re.search(r"logs go to (\S+\.log)", text).group(1)
    assert Path(log_path).is_file() and Path(log_path).stat().st_size > 0  # the lines went somewhere to read


def test_bar_rate_is_over_the_last_minute_and_the_total_is_estimated_from_finished_shards(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(terminal.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    s = terminal.Session("edit", stream, None, verbose=False)
    bar = terminal.BarProgress(s, n_shards=4, total_rows=None, stage_counts=lambda: None)
    try:
        clock[0] += 100
        bar.update("a", 0, False, 10, ok=10, error=0, skipped=0)  # 10 rows in the first 100 s
        assert bar.total() is None
        clock[0] += 70
        bar.update("a", 1, True, 10, ok=9, error=1, skipped=0)  # 10 more rows in 70 s; shard a done (20 rows)
        assert bar.total() == 80  # 4 shards x 20 rows
        # from the last point at least a minute back: the first 100 s (and their slower rate) are forgotten
        assert bar.rate() == pytest.approx(10 / 70)
        clock[0] += 10
        bar.update("b", 0, False, 20, ok=0, error=0, skipped=20)  # skipped rows are not work done
        assert bar.rate() == pytest.approx(10 / 80)
        assert (bar.ok, bar.error, bar.skipped, bar.done) == (19, 1, 20, 40)
    finally:
        bar.close()
    assert "ok 19, error 1, skipped 20" in stream.getvalue() and "(estimated total)" in stream.getvalue()


@pytest.mark.parametrize("running", [True, False], ids=["ray-running", "ray-started"])
def test_a_run_reaches_ray_once_and_says_so_in_one_status_line(monkeypatch, running):
    """The precision check (the cluster's GPUs) and the plan both need Ray; the second need stays quiet."""
    import ray

    from pipeline import cluster

    started = []
    monkeypatch.setattr(ray, "is_initialized", lambda: running or bool(started))
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    stream = io.StringIO()
    monkeypatch.setattr(terminal, "_current", terminal.Session("edit", stream, None, verbose=True))

    run = cluster.RunCluster()
    assert run.gpus() == 0.0  # step 2: resolve_precision with --resources auto
    run.ensure()  # step 7: the plan
    assert run.gpus() == 0.0
    lines = stream.getvalue().splitlines()
    expected = "using the Ray instance this process already runs" if running else "starting Ray (local, "
    assert len(lines) == 1 and lines[0].startswith(f"mgie-batch edit: {expected}"), lines
    assert len(started) == (0 if running else 1)

    cluster.RunCluster().ensure()  # the next run in this process: its own line, once more
    assert len(stream.getvalue().splitlines()) == 2


def test_stage_names_from_ray_data_operators():
    assert terminal.stage_name("Map(read_shard)->Map(decode_unit)") == "read+decode"
    assert terminal.stage_name("Map(ExpressEditStage)") == "express+edit"
    assert terminal.stage_name("Map(ExpressStage)") == "express"
    assert terminal.stage_name("Map(EditStage)") == "edit"
    assert terminal.stage_name("Map(write_unit)") == "write"
    assert terminal.stage_name("Input") is None


def test_outside_a_session_status_is_a_log_line_and_progress_is_the_plain_line(caplog):
    import logging

    from pipeline.progress import Progress

    with caplog.at_level(logging.INFO, logger="mgie_batch"):
        terminal.status("planning 3 sources")
    assert "planning 3 sources" in caplog.text
    assert isinstance(terminal.progress(3, None, enabled=True), Progress)


_NOISY = """
import logging, os, sys, warnings
from pipeline import terminal
with terminal.session("edit", output=sys.argv[1], verbose=sys.argv[2] == "1"):
    terminal.status("planning 1 source")
    os.write(2, b"[2026-11-28 17:38:31,859 E 1 1] core_worker.cc:2465: C++ line\\n")
    logging.getLogger("ray.data").warning("Progress bars disabled")
    warnings.warn("diffusers: upcasting to float32", FutureWarning)
print("summary line", flush=True)
print("an error after the session", file=sys.stderr)
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_session_routes_every_kind_of_log_line_to_the_file_unless_verbose(tmp_path, verbose):
    done = subprocess.run(
        [sys.executable, "-c", _NOISY, str(tmp_path / "out"), "1" if verbose else "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "summary line\n"
    shown = [line for line in done.stderr.splitlines() if line]
    noise = ("core_worker", "Progress bars disabled", "float32")
    assert "mgie-batch edit: planning 1 source" in shown and shown[-1] == "an error after the session"
    if verbose:  # the control: the same lines do reach the terminal when asked for
        assert all(any(n in line for line in shown) for n in noise), shown
        assert not (tmp_path / "out" / "logs").exists()
    else:
        assert not any(n in line for n in noise for line in shown), shown
        logs = list((tmp_path / "out" / "logs").glob("edit-*.log"))
        assert len(logs) == 1 and f"logs go to {logs[0]}" in done.stderr
        text = logs[0].read_text()
        assert all(n in text for n in noise), text
