"""Every bad-input kind of tests/badinputs.py through ONE edit job (tiny model, real S3 endpoint, local Ray):
one assertion per input row, then the books: the ledger balances and the output holds exactly the ok rows.

The decoded working image of the ok kinds whose content matters (EXIF rotation, 16-bit, alpha, palette,
greyscale, 1x1, extreme aspect) is checked on the decode stage itself: the tiny model's output pixels carry
no information about its input.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from pipeline.location import Reach
from pipeline.outputs import OutputSettings
from tests.badinputs import ExpectedRow, build_suite, raw_tar

SUITE = build_suite()
UNIT_ROWS = 8  # several units per shard: unit boundaries fall between the bad rows


def _row_id(r: ExpectedRow) -> str:
    return f"{r.kind}:{r.key}#{r.occurrence}"


@pytest.fixture(scope="module")
def edited(s3, ray_local):
    """Uploads the suite's shards, runs the edit job once, returns (summary, ledger rows, output samples)."""
    from pipeline.config import EditConfig
    from pipeline.ledger import read_ledger
    from pipeline.run import run_edit
    from pipeline.shards import read_members
    from pipeline.storage import Store

    bucket = s3.new_bucket("bad")
    client = s3.client()
    for name, data in SUITE.shards.items():
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)
    out = f"s3://{bucket}/out"
    # the suite checks the bytes around the pixels: square PNG outputs at the working size keep its checks
    # simple (the output options have their own tests: tests/test_outputs*.py)
    summary = run_edit(
        EditConfig.of(
            input=f"s3://{bucket}/in/",
            output=out,
            unit_rows=UNIT_ROWS,
            resources="cpu",
            endpoint_url=s3.url,
            progress=False,
            resize="crop",
            output_size="work",
            image_format="png",
        )
    )
    ledger = read_ledger(Reach(s3.url).at(out)).to_pylist()
    store = Store.open(Reach(s3.url).at(out))
    samples: dict[tuple[str, str], dict[str, bytes]] = {}  # (output shard, key) -> {ext: bytes}
    for tar in sorted({r["output_shard"] for r in ledger if r["output_shard"]}):
        data = store.read_bytes(tar)
        # read_members gives a dict, so a member written twice would collapse into one: count the names
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            names = Counter(archive.getnames())
        assert names and max(names.values()) == 1, (tar, sorted(n for n, c in names.items() if c > 1))
        members = read_members(data)
        assert set(members) == set(names), tar
        for name, blob in members.items():
            key, ext = name.rsplit(".", 1)
            samples.setdefault((tar, key), {})[ext] = blob
    return {"summary": summary, "ledger": ledger, "samples": samples, "store": store, "bucket": bucket}


def _find(ledger: list[dict], r: ExpectedRow) -> dict:
    rows = [x for x in ledger if x["source_shard"].endswith(f"/{r.shard}") and x["key"] == r.key]
    rows.sort(key=lambda x: x["row_index"])
    assert len(rows) > r.occurrence, f"{_row_id(r)}: {len(rows)} ledger rows with key {r.key!r} in {r.shard}"
    return rows[r.occurrence]


@pytest.mark.slow
@pytest.mark.parametrize("expected", SUITE.rows, ids=_row_id)
def test_each_bad_input_row(edited, expected: ExpectedRow):
    row = _find(edited["ledger"], expected)
    sample = edited["samples"].get((row["output_shard"], row["key"])) if row["output_shard"] else None
    expected.expect.verify(row, sample)


@pytest.mark.slow
def test_ledger_balances_and_output_holds_exactly_the_ok_rows(edited):
    summary, ledger = edited["summary"], edited["ledger"]
    assert len(SUITE.kinds) >= 20
    # every input row once: (shard, row_index) is the row's identity
    ids = Counter((r["source_shard"], r["row_index"]) for r in ledger)
    assert max(ids.values()) == 1, [k for k, n in ids.items() if n > 1]
    assert len(ledger) == len(SUITE.rows), sorted((r["source_shard"][-20:], r["key"]) for r in ledger)
    ok = sum(r["status"] == "ok" for r in ledger)
    err = sum(r["status"] == "error" for r in ledger)
    assert summary["complete"] and summary["read"] == summary["ok"] + summary["error"] + summary["skipped"]
    assert (summary["ok"], summary["error"], summary["skipped"]) == (ok, err, 0)
    assert summary["ledger_totals"] == {
        "rows": len(ledger),
        "ok": ok,
        "error": err,
        "units": summary["units_committed"],
    }
    assert sum(summary["errors_by_kind"].values()) == err
    # the output holds a png + json for each ok row and nothing else
    ok_keys = Counter((r["output_shard"], r["key"]) for r in ledger if r["status"] == "ok")
    assert set(edited["samples"]) == set(ok_keys) and max(ok_keys.values()) == 1
    for (tar, key), fields in edited["samples"].items():
        assert sorted(fields) == ["json", "png"], (tar, key, sorted(fields))
        meta = json.loads(fields["json"])
        assert meta["key"] == key and meta["source_shard"].endswith(".tar")
    # no member name can leave the extraction folder
    assert not any(key.startswith("/") or ".." in key.split("/") for _, key in edited["samples"])
    # nothing uncommitted or temporary is left
    store = edited["store"]
    commits = {n[:-5] for n in store.list("commits")}
    assert {n[:-4] for n in store.list("shards")} <= commits and {n[:-8] for n in store.list("ledger")} == commits


@pytest.mark.parametrize("expected", [r for r in SUITE.rows if r.expect.decoded is not None], ids=_row_id)
def test_decoded_content(expected: ExpectedRow):
    """The working image the model is given shows the input as a viewer would (upright, not clipped, ...)."""
    from pipeline import rows, stages
    from pipeline.shards import iter_samples

    shard = SUITE.shards[expected.shard]
    fields = [f for k, f in iter_samples(io.BytesIO(shard)) if k == expected.key][expected.occurrence]
    sample = {"key": expected.key, "row_index": 0, "status": rows.PENDING, "fields": fields}
    unit = {"skip": False, "payload": rows.pack([sample])}
    out = rows.unpack(
        stages.decode_unit(
            unit,
            stages.DecodeSettings(resolution=32, run_seed=0, instruction=None, outputs=OutputSettings(resize="crop")),
        )["payload"]
    )[0]
    assert out["status"] == rows.PENDING, out.get("error")
    pixels = out["pixels"]
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    expected.expect.decoded(pixels)


def test_suite_builders_are_deterministic():
    again = build_suite()
    assert again.shards == SUITE.shards and [_row_id(r) for r in again.rows] == [_row_id(r) for r in SUITE.rows]
    assert raw_tar([("a.txt", b"x")]) == raw_tar([("a.txt", b"x")])
    with tarfile.open(fileobj=io.BytesIO(raw_tar([("a.txt", b"x"), ("b.txt", b"y")]))) as tar:
        assert [m.mtime for m in tar] == [0, 0]  # not the clock: shards built a second apart are equal too
