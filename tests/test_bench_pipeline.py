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
    plain, piped, steady = (saved[k] for k in ("plain_rows_per_s", "pipeline_rows_per_s",
                                               "pipeline_steady_rows_per_s"))
    assert len(plain) == len(piped) == len(steady) == 1
    # rates a real timing gives: positive, finite, not a zero or mixed-up clock (32 rows in under 1 ms)
    assert all(0 < x < 32_000 for x in plain + piped) and (steady[0] is None or 0 < steady[0] < 32_000)
    # one round: the medians are that round's rates, and the ratio is pipeline over plain (not inverted)
    assert (saved["plain_median"], saved["pipeline_median"]) == (plain[0], piped[0])
    assert saved["pipeline_over_plain"] == pytest.approx(piped[0] / plain[0])
    assert saved["met"] is (saved["pipeline_over_plain"] >= 0.9)
