"""`mgie-batch make-dataset` and `edit --expressive summarize` end to end on the real local S3 endpoint and
local Ray with the tiny MGIE and the tiny summarizer: one assertion set per row."""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np
import pytest
from PIL import Image

from jobs import cli
from mgie import Summarizer
from pipeline import ledger
from pipeline.shards import read_members, write_samples
from pipeline.storage import Store

RES = 32


def _png(seed: int, size=(44, 36)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


ROWS = [
    ("plain", {"png": _png(1), "txt": b"make it more healthy"}),
    ("withgoal", {"png": _png(2), "txt": b"add snow", "goal.png": _png(3)}),
    ("jsoninstr", {"png": _png(4), "json": json.dumps({"instruction": "turn it into a watercolor"}).encode()}),
    ("broken", {"png": b"not a png", "txt": b"x"}),
    ("noinstr", {"png": _png(5)}),
]


@pytest.fixture(scope="module")
def dataset_inputs(s3):
    bucket = s3.new_bucket("mkds")
    fsspec.filesystem("s3", **s3.storage_options()).pipe(f"{bucket}/in/part-000.tar", write_samples(ROWS))
    return {"bucket": bucket, "input": f"s3://{bucket}/in/part-000.tar"}


def _args(inputs, output, *extra):
    return [
        "--model",
        "tiny",
        "--input",
        inputs["input"],
        "--output",
        output,
        "--resolution",
        str(RES),
        "--steps",
        "2",
        "--unit-rows",
        "3",
        "--no-progress",
        *extra,
    ]


def _outputs(output: str):
    table = ledger.read_ledger(output)
    store = Store.open(output)
    rows, members = {}, {}
    for r in table.to_pylist():
        rows[r["key"]] = r
        if r["output_shard"] and r["output_shard"] not in members:
            members[r["output_shard"]] = read_members(store.read_bytes(r["output_shard"]))
    return rows, members


@pytest.fixture(scope="module")
def dataset_run(dataset_inputs, ray_local):
    output = f"s3://{dataset_inputs['bucket']}/triplets"
    assert cli.main(["make-dataset", *_args(dataset_inputs, output, "--edit")]) == 0
    rows, members = _outputs(output)
    return {"output": output, "rows": rows, "members": members}


def test_make_dataset_writes_triplets_per_row(dataset_run):
    rows, members = dataset_run["rows"], dataset_run["members"]
    assert sorted(rows) == ["broken", "jsoninstr", "noinstr", "plain", "withgoal"]
    assert rows["broken"]["status"] == "error" and rows["broken"]["error_stage"] == "decode"
    assert rows["noinstr"]["status"] == "error" and "missing instruction" in rows["noinstr"]["error"]
    summ = Summarizer.from_preset("tiny", seed=0)
    for key in ("plain", "withgoal", "jsoninstr"):
        r = rows[key]
        if r["status"] == "error":  # a random MLLM may stop at once; then the row must say so
            assert r["error_stage"] == "explain" and "empty explanation" in r["error"]
            continue
        assert r["explanation"] and r["summary"] and r["expressive_instruction"] == r["summary"]
        # the summary is the summarizer's output for this explanation (the reference prompt and beams)
        assert summ.summarize([r["explanation"]])[0] == r["summary"]
        files = members[r["output_shard"]]
        record = json.loads(files[f"{key}.json"])
        assert record["explanation"] == r["explanation"] and record["summary"] == r["summary"]
        assert record["instruction"] == r["instruction"]
        assert Image.open(io.BytesIO(files[f"{key}.input.png"])).size == (RES, RES)  # what the model saw
        assert Image.open(io.BytesIO(files[f"{key}.png"])).size == (RES, RES)  # the edit (--edit)
        assert (f"{key}.goal.png" in files) == (key == "withgoal")
    assert sum(rows[k]["status"] == "ok" for k in ("plain", "withgoal", "jsoninstr")) >= 2
    goal_row = rows["withgoal"]
    if goal_row["status"] == "ok":
        assert members[goal_row["output_shard"]]["withgoal.goal.png"] == dict(ROWS)["withgoal"]["goal.png"]


def test_make_dataset_resumes_and_refuses_another_summarizer(dataset_run, dataset_inputs):
    output = dataset_run["output"]
    assert cli.main(["make-dataset", *_args(dataset_inputs, output, "--edit", "--json")]) == 0
    summary = json.loads(Store.open(output).read_bytes("summary.json"))
    assert summary["skipped"] == 5 and summary["ok"] == 0
    assert cli.main(["make-dataset", *_args(dataset_inputs, output, "--edit", "--summarizer-seed", "1")]) == 2
    assert cli.main(["make-dataset", *_args(dataset_inputs, output + "-noop", "--model", "noop")]) == 2


def test_edit_with_the_summarizer_pass(dataset_inputs, dataset_run, ray_local):
    """edit --expressive summarize: the edit follows the summary; it is the make-dataset --edit edit."""
    output = f"s3://{dataset_inputs['bucket']}/edit-summarize"
    # make-dataset's square working-size PNGs, so the two jobs' images can be compared byte for byte
    assert (
        cli.main(
            [
                "edit",
                *_args(
                    dataset_inputs, output, "--expressive", "summarize", "--resize", "crop", "--output-size", "work"
                ),
            ]
        )
        == 0
    )
    rows, members = _outputs(output)
    for key, r in rows.items():
        d = dataset_run["rows"][key]
        assert r["status"] == d["status"]
        if r["status"] != "ok":
            continue
        assert r["summary"] == d["summary"] and r["expressive_instruction"] == r["summary"]
        # same model, seed, summary and batch layout: the same pixels as make-dataset --edit
        assert members[r["output_shard"]][f"{key}.png"] == dataset_run["members"][d["output_shard"]][f"{key}.png"]
        assert f"{key}.input.png" not in members[r["output_shard"]]
    # another expressive mode is another run
    assert cli.main(["edit", *_args(dataset_inputs, output, "--resize", "crop", "--output-size", "work")]) == 2


@pytest.mark.slow
def test_make_dataset_without_edit_stores_text_and_input_only(dataset_inputs, dataset_run, ray_local):
    output = f"s3://{dataset_inputs['bucket']}/text-only"
    assert cli.main(["make-dataset", *_args(dataset_inputs, output)]) == 0
    rows, members = _outputs(output)
    for key, r in rows.items():
        if r["status"] != "ok":
            continue
        files = members[r["output_shard"]]
        assert f"{key}.input.png" in files and f"{key}.png" not in files
        assert r["summary"] == dataset_run["rows"][key]["summary"]  # the same text pass as with --edit
