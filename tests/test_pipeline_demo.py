"""`make demo` (python -m jobs.cli demo) end to end in its own process: its own S3 endpoint and Ray instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.shards import read_members

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_its_outputs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    )
    target = tmp_path / "demo-output"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "demo",
            "--shards",
            "1",
            "--rows-per-shard",
            "6",
            "--unit-rows",
            "3",
            "--num-cpus",
            "2",
            "--copy-to",
            str(target),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "rows read  6 = ok 5 + error 1 + skipped (already done) 0" in out, out
    assert "mgie-tiny is a 64 px MGIE trained here on 12 global edits" in out and str(target) in out
    assert "noise" not in out
    # the status view counts the errors the summary counts, with each kind under its heading
    status = out[out.index("mgie-batch status") :]
    assert "errors by kind" in status and "decode:" in status.split("errors by kind", 1)[1].splitlines()[1]
    # the report and the contact sheet next to the outputs, made offline (the endpoint is stopped by then)
    page = (target / "report.html").read_text()
    assert "data:image/jpeg;base64," in page and "Traceback" not in out
    from PIL import Image

    sheet = Image.open(target / "contact-sheet.png")
    assert sheet.width > 600 and sheet.height > 5 * 192  # 5 ok rows, input | output | texts
    summary = json.loads((target / "summary.json").read_text())
    assert summary["read"] == summary["ok"] + summary["error"] == 6
    ledger = pq.read_table(target / "ledger").to_pylist()
    assert len(ledger) == 6 and sum(r["status"] == "error" for r in ledger) == 1
    images = {}
    for tar in (target / "shards").glob("*.tar"):
        images.update(read_members(tar.read_bytes()))
    ok = [r["key"] for r in ledger if r["status"] == "ok"]
    assert sorted(k for k in images if k.endswith(".jpg") and ".input." not in k) == sorted(  # JPEG in, JPEG out
        f"{key}.jpg" for key in ok
    )
    assert sorted(k for k in images if k.endswith(".input.jpg")) == sorted(f"{key}.input.jpg" for key in ok)
    assert len({r["instruction"] for r in ledger}) >= 5  # varied instructions
