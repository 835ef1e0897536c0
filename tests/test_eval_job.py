"""`mgie-batch eval` end to end on the real local S3 endpoint and local Ray: benchmark shards made by the
converter plus hand-made rows, metric columns checked row by row against hand-computed values, the
aggregate table, resume, and the report of the evaluated run."""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np
import pytest
from PIL import Image

from jobs import cli
from pipeline import ledger
from pipeline.evaluation.benchmarks import convert_benchmark
from pipeline.evaluation.metrics import MetricSuite
from pipeline.shards import write_samples
from pipeline.storage import Store
from tests.test_report import page_data

RES = 32
C1 = 0.01**2


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _const(rgb, size=(40, 40)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (size[1], size[0], 3)).copy()


def _noise(seed: int, size=(48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def eval_inputs(s3, tmp_path_factory):
    bucket = s3.new_bucket("eval")
    fs = fsspec.filesystem("s3", **s3.storage_options())
    # shard 1: a MagicBrush test-split layout through the converter (goal = the input: a perfect edit)
    root = tmp_path_factory.mktemp("mb") / "test"
    sessions = {
        str(i): [
            {
                "input": f"{i}-input.png",
                "mask": f"{i}-mask1.png",
                "output": f"{i}-output1.png",
                "instruction": f"edit number {i}",
            }
        ]
        for i in range(3)
    }
    (root / "images").mkdir(parents=True)
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    (root / "local_descriptions.json").write_text(json.dumps({"1": {"1-output1.png": "a photo of noise"}}))
    for i in range(3):
        (root / "images" / str(i)).mkdir()
        data = _png(_noise(i))
        (root / "images" / str(i) / f"{i}-input.png").write_bytes(data)
        (root / "images" / str(i) / f"{i}-output1.png").write_bytes(data)
    report = convert_benchmark(
        "magicbrush", str(root), f"s3://{bucket}/in", shard_size=10, storage_options=s3.storage_options()
    )
    assert report["rows"] == 3
    # shard 2: hand-made rows of the other kinds
    rows = [
        ("const", {"png": _png(_const((10, 20, 30))), "txt": b"make it warmer", "goal.png": _png(_const((40, 20, 0)))}),
        ("nogoal", {"png": _png(_noise(7)), "txt": b"add a hat"}),
        ("badgoal", {"png": _png(_noise(8)), "txt": b"add a hat", "goal.png": b"not an image"}),
        ("badinput", {"png": b"broken", "txt": b"x", "goal.png": _png(_noise(9))}),
    ]
    fs.pipe(f"{bucket}/in/extra-000.tar", write_samples(rows))
    return {"bucket": bucket, "input": f"s3://{bucket}/in/*.tar"}


def _eval(args_in: dict, output: str, *extra: str) -> int:
    return cli.main(
        [
            "eval",
            "--model",
            "tiny",
            "--input",
            args_in["input"],
            "--output",
            output,
            "--resolution",
            str(RES),
            "--unit-rows",
            "4",
            "--no-progress",
            "--metric-models",
            "tiny",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def noop_run(eval_inputs, ray_local):
    """`--model noop` returns the input as the edit: metric values are known in advance."""
    output = f"s3://{eval_inputs['bucket']}/out-noop"
    assert _eval(eval_inputs, output, "--model", "noop") == 0
    table = ledger.read_ledger(output)
    return {"output": output, "rows": {r["key"]: r for r in table.to_pylist()}}


def test_metric_values_match_hand_computed_ones(noop_run):
    rows = noop_run["rows"]
    assert sorted(rows) == ["0_1", "1_1", "2_1", "badgoal", "badinput", "const", "nogoal"]
    for key in ("0_1", "1_1", "2_1"):  # edit == goal
        r = rows[key]
        assert r["status"] == "ok"
        assert r["metric_l1"] == 0.0 and r["metric_lpips"] == 0.0
        assert r["metric_ssim"] == pytest.approx(1.0, abs=1e-9)
        assert r["metric_clip_i"] == pytest.approx(1.0, abs=1e-6) and r["metric_dino"] == pytest.approx(1.0, abs=1e-6)
    c = rows["const"]  # constant (10,20,30) edit against constant (40,20,0) goal
    assert c["metric_l1"] == pytest.approx(20 / 255, abs=1e-7)
    a, b = np.array([10, 20, 30]) / 255, np.array([40, 20, 0]) / 255
    assert c["metric_ssim"] == pytest.approx(float(np.mean((2 * a * b + C1) / (a * a + b * b + C1))), abs=1e-6)
    n = rows["nogoal"]
    assert n["status"] == "ok" and n["metric_l1"] is None and n["metric_dino"] is None
    assert n["metric_clip_t"] is not None  # the instruction stands in for a caption
    assert rows["badgoal"]["status"] == "error" and rows["badgoal"]["error_stage"] == "metrics"
    assert "goal image unreadable" in rows["badgoal"]["error"]
    assert rows["badinput"]["status"] == "error" and rows["badinput"]["error_stage"] == "decode"


def test_clip_t_uses_the_caption_when_the_row_has_one(noop_run):
    from mgie import preprocess_image

    suite = MetricSuite.tiny(0, metrics=("clip_t",))
    image = preprocess_image(Image.fromarray(_noise(1)), RES)
    by_caption = suite.score([image], [None], ["a photo of noise"])["clip_t"][0]
    by_instruction = suite.score([image], [None], ["edit number 1"])["clip_t"][0]
    assert by_caption != pytest.approx(by_instruction, abs=1e-6)
    assert noop_run["rows"]["1_1"]["metric_clip_t"] == pytest.approx(by_caption, abs=1e-6)


def test_aggregate_tables_and_resume(noop_run, eval_inputs):
    store = Store.open(noop_run["output"])
    doc = json.loads(store.read_bytes("metrics.json"))
    assert doc["rows"] == 7 and doc["ok"] == 5
    assert doc["metrics"]["l1"]["count"] == 4  # the three perfect edits and the constant pair
    assert doc["metrics"]["l1"]["mean"] == pytest.approx(20 / 255 / 4, abs=1e-7)
    assert doc["metrics"]["clip_t"]["count"] == 5
    assert "| l1 | 0.0196 |" in store.read_bytes("metrics.md").decode()
    summary = json.loads(store.read_bytes("summary.json"))
    assert summary["read"] == 7 and summary["ok"] == 5 and summary["error"] == 2
    # the same command again: everything is committed, the tables are rebuilt from the ledger
    assert _eval(eval_inputs, noop_run["output"], "--model", "noop") == 0
    again = json.loads(store.read_bytes("summary.json"))
    assert again["skipped"] == 7 and again["ok"] == 0 and again["metrics"]["l1"]["count"] == 4
    # other metric settings are another run: refused on the same output
    assert _eval(eval_inputs, noop_run["output"], "--model", "noop", "--metrics", "l1") == 2


def test_report_of_the_evaluated_run_shows_metrics(noop_run):
    from pipeline.reporting.report import build_report

    page = build_report(noop_run["output"])
    assert "<td>l1</td><td>0.0196</td><td>4</td><td>lower</td>" in page
    rows = {r["key"]: r for r in page_data(page)["rows"]}
    assert rows["const"]["metrics"]["l1"] == pytest.approx(20 / 255, abs=1e-4)
    # thumbnails come from the input shards on S3 (input, goal) and the run's own shards (edit)
    assert all(rows["const"]["img"][k] for k in ("input", "edit", "goal"))
    assert rows["nogoal"]["img"]["goal"] is None and rows["badinput"]["img"]["edit"] is None
    assert rows["badgoal"]["stage"] == "metrics"


@pytest.mark.slow
def test_eval_with_the_tiny_mgie(eval_inputs, ray_local):
    output = f"s3://{eval_inputs['bucket']}/out-tiny"
    assert _eval(eval_inputs, output, "--model", "tiny", "--steps", "2", "--metrics", "l1,ssim,clip_i,dino") == 0
    rows = {r["key"]: r for r in ledger.read_ledger(output).to_pylist()}
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == 5 and all(r["expressive_instruction"] is not None for r in ok)
    for r in ok:
        if r["key"] == "nogoal":
            assert r["metric_l1"] is None
            continue
        assert 0.0 < r["metric_l1"] < 1.0 and -1.0 <= r["metric_ssim"] <= 1.0
        assert -1.0 <= r["metric_clip_i"] <= 1.0 and -1.0 <= r["metric_dino"] <= 1.0
    assert "metric_lpips" not in ledger.read_ledger(output).column_names
