"""Load benchmark: one large edit job with the tiny model; is the driver's memory flat while it streams?

    python -m bench.load                          # 5,000 rows (20 shards x 250), unit_rows 64
    python -m bench.load --rows 300 --rows-per-shard 100 --out /tmp/load.json   # quick

The job is the real command (`python -m jobs.cli edit`) in its own process, reading shards from and writing
outputs to a local S3 endpoint (moto, HTTP on 127.0.0.1), on a private local Ray instance that the driver
starts. This process samples the driver's resident memory (VmRSS from /proc) twice a second and the number
of committed units every few seconds, so the figures are of the driver alone: Ray workers are separate
processes and are not counted.

Streaming means the driver holds a unit's small commit record at a time, never the rows: its RSS should
rise while it imports and plans, then stay flat however many rows pass. The JSON records the whole RSS
timeline, the peak, and the RSS over each quarter of the committed rows, with the growth between the second
and the last quarter per 1,000 rows (near zero when flat); also the rate once the actors are up (rows after
the first commit over the time from the first to the last commit, from the commit records, as in
bench.scaling) and the machine's load average at the start and at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _shard(index: int, rows: int) -> bytes:
    """`rows` samples of a 64x48 synthetic JPEG + instruction, different pixels per row (deterministic)."""
    from bench.images import synthetic_jpegs
    from pipeline.shards import write_samples

    jpegs = synthetic_jpegs(rows, (64, 48), seed=index, quality=85)
    return write_samples(
        (f"s{index:03d}-{i:05d}", {"jpg": jpg, "txt": b"make it brighter"}) for i, jpg in enumerate(jpegs)
    )


def run(rows: int, rows_per_shard: int, unit_rows: int, model: str, sample_s: float) -> dict:
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # before this benchmark's own work
    import logging

    from bench.scaling import steady_rate
    from pipeline.dev.local_s3 import local_s3
    from pipeline.storage import Store

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
    shards = -(-rows // rows_per_shard)
    tmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # Ray's socket paths must stay short
    with local_s3(("load",)) as s3:
        client = s3.client()
        for i in range(shards):
            n = min(rows_per_shard, rows - i * rows_per_shard)
            client.put_object(Bucket="load", Key=f"in/load-{i:03d}.tar", Body=_shard(i, n))
        output = "s3://load/out"
        env = {
            **os.environ,
            **s3.env(),
            "RAY_TMPDIR": tmp,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("RAY_ADDRESS", None)  # a private instance, not whatever cluster the shell points at
        argv = [
            sys.executable,
            "-m",
            "jobs.cli",
            "edit",
            "--input",
            f"s3://load/in/load-{{000..{shards - 1:03d}}}.tar",
            "--output",
            output,
            "--model",
            model,
            "--unit-rows",
            str(unit_rows),
            "--resources",
            "cpu",
            "--no-progress",
            "--json",
        ]
        log = Path(tmp) / "driver.log"
        t0 = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
            timeline: list[tuple[float, float]] = []  # (s, MB)
            progress: list[tuple[float, int]] = []  # (s, units committed)
            next_count = 0.0
            while proc.poll() is None:
                t = time.monotonic() - t0
                rss = _rss_mb(proc.pid)
                if rss is not None:
                    timeline.append((round(t, 2), round(rss, 1)))
                if t >= next_count:
                    page = client.list_objects_v2(Bucket="load", Prefix="out/commits/")
                    progress.append((round(t, 2), page.get("KeyCount", 0)))
                    next_count = t + 5.0
                time.sleep(sample_s)
            stdout = proc.stdout.read()
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"the edit job failed ({proc.returncode}); its log:\n{log.read_text()[-4000:]}")
        summary = json.loads(stdout[stdout.index("{") :])
        # rows/s from the first commit to the last, from the commit records (as bench.scaling and bench.pipeline)
        steady, _ = steady_rate(Store.open(output, options=s3.storage_options()))
    shutil.rmtree(tmp, ignore_errors=True)

    # RSS per quarter of the committed units (time-aligned through the commit counts)
    units_total = summary["units_committed"]

    def units_at(t: float) -> int:
        done = [n for s, n in progress if s <= t]
        return done[-1] if done else 0

    quarters: list[float | None] = []
    for q in range(4):
        lo, hi = units_total * q / 4, units_total * (q + 1) / 4
        vals = [mb for t, mb in timeline if lo <= units_at(t) < hi or (q == 3 and units_at(t) >= hi)]
        quarters.append(round(statistics.median(vals), 1) if vals else None)
    growth = None
    if quarters[1] is not None and quarters[3] is not None:
        growth = round((quarters[3] - quarters[1]) / (rows / 2 / 1000), 2)  # MB per 1,000 rows
    step = max(1, len(timeline) // 400)  # keep the file small
    return {
        "benchmark": "load",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "config": {
            "rows": rows,
            "shards": shards,
            "rows_per_shard": rows_per_shard,
            "unit_rows": unit_rows,
            "model": model,
            "resources": "cpu",
        },
        "result": {
            "rows_ok": summary["ok"],
            "rows_error": summary["error"],
            "units": units_total,
            "job_seconds": summary["seconds"],
            "wall_seconds": round(wall, 2),
            "rows_per_second": summary["rows_per_second"],
            "steady_rows_per_second_after_first_commit": round(steady, 3) if steady else None,
            "peak_driver_rss_mb": max(mb for _, mb in timeline),
            "driver_rss_mb_by_quarter_of_rows": quarters,
            "driver_rss_growth_mb_per_1000_rows_q2_to_q4": growth,
            "mean_ms_per_row": summary["mean_ms"],
        },
        "timeline_rss_mb": timeline[::step],
        "timeline_units_committed": progress,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000, help="input rows (default: 5000)")
    ap.add_argument("--rows-per-shard", type=int, default=250, help="rows per input shard (default: 250)")
    ap.add_argument("--unit-rows", type=int, default=64, help="rows per output unit (default: 64)")
    ap.add_argument("--model", default="tiny", help="model preset or 'noop' (default: tiny)")
    ap.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval in seconds (default: 0.5)")
    ap.add_argument("--out", default=None, help="JSON path (default: bench/results/load-cpu-<rows>.json)")
    args = ap.parse_args(argv)
    result = run(args.rows, args.rows_per_shard, args.unit_rows, args.model, args.sample_s)
    out = Path(args.out or ROOT / "bench" / "results" / f"load-cpu-{args.rows}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["result"], indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
