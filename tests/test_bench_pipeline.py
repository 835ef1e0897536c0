"""The pipeline-overhead benchmark (P3) runs end to end on a tiny input and reports both rates."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_pipeline_overhead_benchmark_smoke(ray_local, tmp_path):
    from bench.pipeline import main

    result = main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "pipeline-overhead-quick.json").read_text())
    assert saved["rows"] == 32
    assert saved["plain_median"] > 0 and saved["pipeline_median"] > 0
    assert saved["pipeline_over_plain"] == pytest.approx(result["pipeline_median"] / result["plain_median"])
    assert len(saved["pipeline_steady_rows_per_s"]) == 1
