"""The pipeline-overhead benchmark (P3) runs end to end on a tiny input and reports both rates."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_pipeline_overhead_benchmark_smoke(ray_local, tmp_path):
    from bench.pipeline import main

    result = main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "pipeline-overhead-quick.json").read_text())
    assert saved == json.loads(json.dumps(result))  # the file holds what the run returned
    assert saved["rows"] == 32 and saved["settings"]["rounds"] == 1
    plain, piped, steady = (saved[k] for k in ("plain_rows_per_s", "pipeline_rows_per_s", "pipeline_steady_rows_per_s"))
    assert len(plain) == len(piped) == len(steady) == 1
    # rates a real timing gives: positive, finite, not a zero or mixed-up clock (32 rows in under 1 ms)
    assert all(0 < x < 32_000 for x in plain + piped) and (steady[0] is None or 0 < steady[0] < 32_000)
    # one round: the medians are that round's rates, and the ratio is pipeline over plain (not inverted)
    assert (saved["plain_median"], saved["pipeline_median"]) == (plain[0], piped[0])
    assert saved["pipeline_over_plain"] == pytest.approx(piped[0] / plain[0])
    assert saved["met"] is (saved["pipeline_over_plain"] >= 0.8)
    # where the run's start-up went: each driver step ends after the one before it, the first commit last
    [startup] = saved["pipeline_startup_s"]
    steps = ("checks", "identity", "output_state", "plan", "first_commit")
    assert set(startup) == set(steps)
    times = [startup[s] for s in steps]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 600


@pytest.mark.slow
def test_product_gpu_benchmark_smoke_runs_the_real_command(tmp_path):
    """bench/pipeline_gpu.py --quick: both layouts through the real CLI, the in-process baselines, one JSON."""
    from bench.pipeline_gpu import main

    report = main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "pipeline-cpu-quick.json").read_text())
    assert set(saved["scenarios"]) == {"fused-20", "split-20"}
    for name, run in saved["scenarios"].items():
        assert run["returncode"] == 0 and not run["stopped_at_deadline"], run.get("stderr_tail")
        assert run["rows_committed"] == 8 and run["units_committed"] == 2, name  # 8 rows in units of 4
        assert run["job_summary"]["layout"] == run["scenario"]["layout"]
        assert 0 < run["first_commit_s"] < run["seconds"] and run["end_to_end_rows_per_s"] > 0
        assert "steady_rows_per_s" not in run  # two units are not enough for a steady rate
        assert set(run["stage_ms_per_row"]) >= {"express", "edit", "encode"}
    assert {"stock-bs2@2", "engine@2"} <= set(saved["in_process"])
    # fp32 on the CPU: the product's diffusion settings give the stock pipeline's pixels
    assert saved["quality_guard_psnr_db"] is None or saved["quality_guard_psnr_db"] > 60
    assert saved["steps"] == 2 and report["first_commit_s"] == saved["first_commit_s"]
