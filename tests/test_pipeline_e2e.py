"""The edit job end to end: a real S3 endpoint (moto server over HTTP), real local Ray, the tiny MGIE.

One set of input shards (2 shards, 24 rows, 6 bad ones of different kinds) feeds every run here; each run
is checked row by row. The crash tests run the driver as a separate process on the same Ray instance and
SIGKILL it, then rerun and compare with the uninterrupted run: same rows, same pixels, once each. They run
in both --output-format values and compare with the same uninterrupted (webdataset) run: the format changes
the files, never the rows, pixels or per-sample JSON.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import ledger
from pipeline.config import EditConfig
from pipeline.editors import ModelSpec
from pipeline.layout import OutputLayout
from pipeline.run import run_edit
from pipeline.shards import read_members, write_samples
from pipeline.storage import Store

ROOT = Path(__file__).resolve().parent.parent
UNIT_ROWS = 4
ROWS_PER_SHARD = 12
INSTRUCTIONS = ["make it brighter", "add snow", "turn it into a watercolor", "make the sky blue"]

# (shard, row) -> (error stage, text in the message); every other row must come out ok
BAD = {
    (0, 2): ("decode", "UnidentifiedImageError"),
    (0, 5): ("validate", "missing instruction"),
    (0, 9): ("decode", "no image"),
    (1, 1): ("validate", "bad json"),
    (1, 7): ("validate", "'seed' must be"),
    (1, 10): ("decode", "OSError"),  # truncated JPEG
}


def _image(seed: int, fmt: str) -> bytes:
    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 256, (40 + seed % 3 * 8, 56, 3), dtype=np.uint8)  # varied sizes, centre-cropped later
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _row(shard: int, i: int) -> tuple[str, dict[str, bytes]]:
    key = f"s{shard}-r{i:03d}"
    instruction = INSTRUCTIONS[(i + shard) % len(INSTRUCTIONS)]
    fields: dict[str, bytes] = {"png": _image(100 * shard + i, "PNG"), "txt": instruction.encode()}
    if i % 4 == 3:  # instruction and a seed in the JSON instead
        fields = {
            "jpg": _image(100 * shard + i, "JPEG"),
            "json": json.dumps({"instruction": instruction, "seed": 1000 + i, "sku": key}).encode(),
        }
    bad = BAD.get((shard, i))
    if bad == ("decode", "UnidentifiedImageError"):
        fields["png"] = b"this is not an image"
    elif bad == ("validate", "missing instruction"):
        del fields["txt"]
    elif bad == ("decode", "no image"):
        fields = {"txt": instruction.encode(), "cls": b"7"}
    elif bad == ("validate", "bad json"):
        fields["json"] = b"{not json"
    elif bad == ("validate", "'seed' must be"):
        fields["json"] = json.dumps({"instruction": instruction, "seed": "abc"}).encode()
    elif bad == ("decode", "OSError"):
        fields = {"jpg": _image(7, "JPEG")[:300], "txt": instruction.encode()}
    return key, fields


@pytest.fixture(scope="module")
def inputs(s3):
    bucket = s3.new_bucket("pipe")
    client = s3.client()
    for shard in range(2):
        data = write_samples([_row(shard, i) for i in range(ROWS_PER_SHARD)])
        client.put_object(Bucket=bucket, Key=f"in/shard-{shard:03d}.tar", Body=data)
    return {
        "bucket": bucket,
        "pattern": f"s3://{bucket}/in/shard-{{000..001}}.tar",
        "shards": [f"s3://{bucket}/in/shard-{s:03d}.tar" for s in range(2)],
    }


def _config(inputs, output: str, **kw) -> EditConfig:
    return EditConfig.of(
        input=inputs["pattern"],
        output=f"s3://{inputs['bucket']}/{output}",
        model=ModelSpec("tiny"),
        unit_rows=UNIT_ROWS,
        progress=False,
        **kw,
    )


def _output_members(store: Store, rel: str) -> dict[str, bytes]:
    """An output file's images and JSON as tar member names, whichever --output-format wrote it."""
    if not rel.endswith(".parquet"):
        return read_members(store.read_bytes(rel))
    import pyarrow.parquet as pq

    members = {}
    with store.fs.open(store.path(rel), "rb") as f:
        for row in pq.read_table(f, columns=["key", "image", "image_format", "sample_json"]).to_pylist():
            if row["image"] is not None:
                members[f"{row['key']}.{row['image_format']}"] = row["image"]
                members[f"{row['key']}.json"] = row["sample_json"].encode()
    return members


def _snapshot(output: str) -> dict[tuple[str, str], dict]:
    """(source shard, key) -> ledger row (minus timings and unit names) + the output PNG and JSON."""
    table = ledger.read_ledger(output)
    store = Store.open(output)
    tars: dict[str, dict[str, bytes]] = {}
    out = {}
    for row in table.to_pylist():
        ident = (row["source_shard"], row["key"])
        assert ident not in out, f"row {ident} is in the ledger twice"
        if row["output_shard"]:
            if row["output_shard"] not in tars:
                tars[row["output_shard"]] = _output_members(store, row["output_shard"])
            members = tars[row["output_shard"]]
            key = row["key"]  # the edited image comes back in the input's format family
            row["png"] = members[f"{key}.png"] if f"{key}.png" in members else members[f"{key}.jpg"]
            row["json"] = json.loads(members[f"{row['key']}.json"])
        for col in ("ms_decode", "ms_express", "ms_edit", "ms_encode", "unit", "output_shard"):
            row.pop(col)
        out[ident] = row
    return out


def _comparable(rows: dict, fmt: str) -> dict:
    """Rows of a run in `fmt` as the webdataset run has them: another format is another run (its own
    fingerprint in the ledger and the JSON), with the same rows, pixels and JSON otherwise."""
    if fmt == "webdataset":
        return rows
    out = {}
    for ident, row in rows.items():
        row = {k: v for k, v in row.items() if k != "run_fingerprint"}
        if "json" in row:
            row["json"] = {k: v for k, v in row["json"].items() if k != "run_fingerprint"}
        out[ident] = row
    return out


FORMATS = pytest.mark.parametrize("fmt", ["webdataset", "parquet"])


@pytest.fixture(scope="module")
def first_run(inputs, ray_local):
    cfg = _config(inputs, "out-first")
    summary = run_edit(cfg)
    return {"cfg": cfg, "summary": summary, "rows": _snapshot(cfg.io.output)}


def test_every_row_once_with_the_right_status_and_decodable_outputs(inputs, first_run):
    rows, summary = first_run["rows"], first_run["summary"]
    assert len(rows) == 2 * ROWS_PER_SHARD
    for shard in range(2):
        for i in range(ROWS_PER_SHARD):
            key = f"s{shard}-r{i:03d}"
            row = rows[(inputs["shards"][shard], key)]
            assert row["run_fingerprint"] == summary["run_fingerprint"]
            if (shard, i) in BAD:
                stage, text = BAD[(shard, i)]
                assert (row["status"], row["error_stage"]) == ("error", stage), row
                assert text in row["error"], row["error"]
                assert "png" not in row
                continue
            assert row["status"] == "ok" and row["error"] is None and row["error_stage"] is None, row
            with Image.open(io.BytesIO(row["png"])) as img:
                # --resize fit, --output-size original: the input's own size and format
                assert img.format == ("JPEG" if i % 4 == 3 else "PNG") and img.mode == "RGB"
                assert img.size == (56, 40 + (100 * shard + i) % 3 * 8)
            meta = row["json"]
            assert meta["instruction"] == row["instruction"] == INSTRUCTIONS[(i + shard) % len(INSTRUCTIONS)]
            assert meta["expressive_instruction"] == row["expressive_instruction"] and row["expressive_instruction"]
            assert meta["seed"] == row["seed"] and meta["sampler"]["num_inference_steps"] == 4
            if i % 4 == 3:
                assert row["seed"] == 1000 + i and meta["input"]["sku"] == key  # the row's JSON is carried
    n_bad = len(BAD)
    assert summary["read"] == summary["ok"] + summary["error"] + summary["skipped"] == 24
    assert (summary["ok"], summary["error"], summary["skipped"]) == (24 - n_bad, n_bad, 0)
    assert summary["units_committed"] == 6 and summary["complete"]
    assert summary["errors_by_kind"]["validate:missing instruction"] == 1


def test_output_layout_has_no_orphans_and_status_agrees(inputs, first_run):
    from pipeline.reporting.status import format_status, output_status

    output = first_run["cfg"].io.output
    state = ledger.load_state(Store.open(output))
    assert not state.orphans and not state.stale_commits and len(state.commits) == 6
    st = output_status(output)
    assert st["rows"] == 24 and st["status"] == {"ok": 24 - len(BAD), "error": len(BAD)}
    assert st["shards_complete"] == 2
    for shard in inputs["shards"]:
        assert st["shards"][shard]["rows"] == ROWS_PER_SHARD and st["shards"][shard]["error"] == 3
    assert sum(st["errors_by_kind"].values()) == len(BAD)
    text = format_status(st)
    assert "ok 18, error 6" in text and "decode:UnidentifiedImageError" in text


def test_rerun_of_a_finished_run_skips_everything(inputs, first_run):
    summary = run_edit(first_run["cfg"])
    assert (summary["ok"], summary["error"], summary["skipped"], summary["read"]) == (0, 0, 24, 24)
    assert _snapshot(first_run["cfg"].io.output) == first_run["rows"]


def test_same_command_into_a_new_output_gives_identical_images(inputs, first_run):
    cfg = _config(inputs, "out-second")
    # in two goes: a trial run with --limit stops after whole units, the same command without it finishes
    partial = run_edit(EditConfig.of(**{**cfg.__dict__, "limit": 5}))
    assert not partial["complete"] and 5 <= partial["ok"] + partial["error"] < 24
    assert partial["read"] == partial["ok"] + partial["error"] + partial["skipped"]
    rest = run_edit(cfg)
    assert rest["complete"] and rest["skipped"] == partial["read"]
    assert rest["read"] == rest["ok"] + rest["error"] + rest["skipped"] == 24
    second = _snapshot(cfg.io.output)
    assert second.keys() == first_run["rows"].keys()
    for ident, row in second.items():
        first = first_run["rows"][ident]
        assert row.get("png") == first.get("png"), f"{ident}: pixels differ between identical runs"
        assert row == first


def test_a_changed_configuration_is_refused(inputs, first_run, capsys):
    from jobs import cli

    with pytest.raises(ledger.RunConfigMismatch, match="sampler.num_inference_steps: 4 -> 2"):
        run_edit(_config(inputs, "out-first", steps=2))
    with pytest.raises(ledger.RunConfigMismatch, match="outputs.format: 'webdataset' -> 'parquet'"):
        run_edit(_config(inputs, "out-first", output_format="parquet"))  # one output holds one format
    status = cli.main(
        [
            "edit",
            "--model",
            "tiny",
            "--input",
            inputs["pattern"],
            "--output",
            first_run["cfg"].io.output,
            "--unit-rows",
            str(UNIT_ROWS),
            "--instruction",
            "make it pink",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "refused" in err and "instruction: None -> 'make it pink'" in err
    assert _snapshot(first_run["cfg"].io.output) == first_run["rows"]  # nothing was touched


def _driver(inputs, output: str, ray_local, faults: str, *extra: str, fmt: str = "webdataset") -> subprocess.Popen:
    """`python -m jobs.cli edit` as its own process (a driver we can SIGKILL) on the session's Ray instance."""
    env = {**os.environ, **ray_local.env(), "MGIE_BATCH_FAULTS": faults}
    argv = [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--model",
        "tiny",
        "--input",
        inputs["pattern"],
        "--output",
        f"s3://{inputs['bucket']}/{output}",
        "--unit-rows",
        str(UNIT_ROWS),
        "--no-progress",
        "--output-format",
        fmt,
        *extra,
    ]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _commits(s3, inputs, output: str) -> list[str]:
    return s3.list_keys(inputs["bucket"], f"{output}/commits/")


@pytest.mark.slow
@FORMATS
def test_retry_errors_reprocesses_only_error_rows_even_across_a_crash(inputs, first_run, ray_local, monkeypatch, fmt):
    flaky = ["s0-r001", "s1-r004"]  # good rows that fail once, as a transient fault would
    cfg = _config(inputs, f"out-retry-{fmt}", output_format=fmt)
    monkeypatch.setenv("MGIE_BATCH_FAULTS", f"express.fail={'|'.join(flaky)}")
    first = run_edit(cfg)
    assert first["error"] == len(BAD) + 2 and first["errors_by_kind"]["express:ValueError"] == 2
    before = _snapshot(cfg.io.output)
    store = Store.open(cfg.io.output)
    commits_before = ledger.load_state(store).commits
    monkeypatch.delenv("MGIE_BATCH_FAULTS")

    # a retry whose driver dies right after its first commit, before deleting the attempt it replaces:
    # two commit records of one unit. Readers must see the new one only.
    proc = _driver(inputs, f"out-retry-{fmt}", ray_local, "driver.kill_after_commit=1", "--retry-errors", fmt=fmt)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    state = ledger.load_state(store)
    assert len(state.stale_commits) == 1, "the killed driver should have left the replaced attempt behind"
    assert len(_snapshot(cfg.io.output)) == 24  # still every row once

    retry = run_edit(EditConfig.of(**{**cfg.__dict__, "retry_errors": True}))
    after = _snapshot(cfg.io.output)
    assert retry["read"] == 24 and retry["read"] == retry["ok"] + retry["error"] + retry["skipped"]
    assert retry["error"] == len(BAD) and retry["ok"] <= 2  # one flaky row may have been redone before the kill
    assert after.keys() == before.keys()
    for ident, row in after.items():
        if ident[1] in flaky:
            assert before[ident]["status"] == "error" and row["status"] == "ok" and "png" in row
            clean = first_run["rows"][ident]  # the row as a run without the fault made it
            assert (row["seed"], row["instruction"]) == (clean["seed"], clean["instruction"])
        else:
            assert row == before[ident], f"{ident} was touched by --retry-errors"
    # units without errors were never rewritten; units with errors were replaced by newer attempts (the
    # one the killed driver committed still held the bad rows, so the last retry redid it once more)
    state = ledger.load_state(store)
    assert not state.orphans and not state.stale_commits
    for base, rec in state.commits.items():
        had_errors = bool(commits_before[base]["error_rows"])
        assert (rec["attempt"] >= 1) == had_errors, base
        if not had_errors:
            assert rec == commits_before[base]


# ------------------------------------------------------------------------------------------ crash tests


@pytest.mark.slow
@FORMATS
def test_sigkilled_drivers_then_rerun_is_exactly_once_with_no_orphans(s3, inputs, first_run, ray_local, fmt):
    """Driver 1 is SIGKILLed from outside after its first commit; driver 2 resumes and SIGKILLs itself
    between a unit's files and its commit (orphans guaranteed); run 3 finishes. The result must equal the
    uninterrupted run: every row once, same statuses, same pixels, no orphan file."""
    output = f"out-sigkill-{fmt}"
    proc = _driver(inputs, output, ray_local, "express.sleep=1.0", fmt=fmt)
    deadline = time.monotonic() + 300
    while not _commits(s3, inputs, output):
        assert proc.poll() is None, f"driver ended before its first commit:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no commit within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = _commits(s3, inputs, output)
    assert 1 <= len(done) < 6, f"the kill should land mid-run; {len(done)} units were committed"
    assert not s3.list_keys(inputs["bucket"], f"{output}/summary.json")

    proc = _driver(inputs, output, ray_local, "driver.kill_before_commit=1", fmt=fmt)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    store = Store.open(f"s3://{inputs['bucket']}/{output}")
    state = ledger.load_state(store)
    assert len(state.commits) == len(done), "the second driver died before committing anything"
    ledger_file = OutputLayout().ledger if fmt == "webdataset" else OutputLayout().data
    assert any(p == ledger_file(OutputLayout().unit_of(p) or "") for p in state.orphans), (
        f"a written, uncommitted unit must be an orphan: {state.orphans}"
    )
    assert len(ledger.read_ledger(store.url)) == len(done) * UNIT_ROWS  # readers see committed units only

    summary = run_edit(_config(inputs, output, output_format=fmt))
    assert summary["orphans_removed_at_start"] >= 1
    assert summary["skipped"] == len(done) * UNIT_ROWS
    assert summary["read"] == summary["ok"] + summary["error"] + summary["skipped"] == 24
    assert _comparable(_snapshot(store.url), fmt) == _comparable(first_run["rows"], fmt), (
        "resumed run differs from the uninterrupted one"
    )
    state = ledger.load_state(store)
    assert not state.orphans and not state.stale_commits and len(state.commits) == 6
    assert {rec["output_format"] for rec in state.commits.values()} == {fmt}
    again = run_edit(_config(inputs, output, output_format=fmt))  # resume skips every committed unit
    assert (again["skipped"], again["ok"] + again["error"]) == (24, 0)
