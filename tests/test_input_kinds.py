"""Every input kind end to end over the real S3 endpoint, each killed and resumed exactly once.

Kinds: a folder of images with sidecar instructions, a Parquet manifest of relative paths, a Parquet manifest
with embedded bytes as HF datasets writes it ({"bytes", "path"} structs), a CSV of s3:// URLs, and a JSONL of
HTTP URLs served by a local http.server. For each: the driver SIGKILLs itself right after its first commit
(MGIE_BATCH_FAULTS driver.kill_after_commit=1), the same command runs again, and then every source row is in
the ledger exactly once, with the status it should have and its image in the output. The model is `noop` (the
input side is under test; the model stages are covered by test_pipeline_e2e).
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.local_http import serving

ROOT = Path(__file__).resolve().parent.parent
UNIT_ROWS = 2


def png(seed: int) -> bytes:
    arr = np.random.RandomState(seed).randint(0, 256, (24, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png(seed))).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def http_images(tmp_path_factory):
    """A local HTTP server over a folder of images; stopped after the module."""
    folder = tmp_path_factory.mktemp("http")
    for i in range(5):
        (folder / f"h{i}.png").write_bytes(png(400 + i))
    with serving(functools.partial(_QuietHandler, directory=str(folder))) as url:
        yield url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one stderr line per request otherwise
        pass


def _parquet(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


def _put(s3, bucket: str, key: str, body: bytes) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=body)


def build_folder(s3, bucket: str, http_url: str) -> dict:
    """6 images: txt sidecars, a json sidecar, one without any instruction (validate error), one not an image."""
    expected = {}
    for i, name in enumerate(["a", "b", "c", "d", "sub/e", "sub/f"]):
        ext = "jpg" if i % 2 else "png"
        _put(s3, bucket, f"photos/{name}.{ext}", jpeg(i) if ext == "jpg" else png(i))
        expected[i] = "ok"
        if name == "c":
            expected[i] = "validate"  # no sidecar, no --instruction
        elif name == "d":
            _put(s3, bucket, f"photos/{name}.json", json.dumps({"instruction": "add snow", "seed": 7}).encode())
        else:
            _put(s3, bucket, f"photos/{name}.txt", b"make it brighter")
    _put(s3, bucket, "photos/sub/f.jpg", b"not an image at all")
    expected[5] = "decode"
    return {"input": f"s3://{bucket}/photos", "source": f"s3://{bucket}/photos/", "expected": expected}


def build_parquet_paths(s3, bucket: str, http_url: str) -> dict:
    """Relative paths next to the manifest; one path that does not exist (fetch error)."""
    paths = []
    for i in range(5):
        _put(s3, bucket, f"mp/imgs/{i}.png", png(100 + i))
        paths.append(f"imgs/{i}.png")
    paths[3] = "imgs/missing.png"
    table = pa.table({"image": paths, "instruction": ["make it brighter"] * 5, "sku": [f"sku{i}" for i in range(5)]})
    _put(s3, bucket, "mp/manifest.parquet", _parquet(table))
    return {
        "input": f"s3://{bucket}/mp/manifest.parquet",
        "expected": {i: "fetch" if i == 3 else "ok" for i in range(5)},
    }


def build_parquet_hf(s3, bucket: str, http_url: str) -> dict:
    """HF datasets' Image feature as written to Parquet: a struct of bytes and path; `caption`; a key column."""
    images = [{"bytes": png(200 + i), "path": f"{i}.png"} for i in range(5)]
    images[2] = {"bytes": b"\x00garbage", "path": "2.png"}
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {"image": pa.array(images, type=struct), "caption": ["add snow"] * 5, "key": [f"item.{i}" for i in range(5)]}
    )
    _put(s3, bucket, "hf/data/train-00000-of-00001.parquet", _parquet(table))
    return {
        "input": f"s3://{bucket}/hf/data",
        "source": f"s3://{bucket}/hf/data/train-00000-of-00001.parquet",
        "expected": {i: "decode" if i == 2 else "ok" for i in range(5)},
        "keys": [f"item_{i}" for i in range(5)],
    }


def build_csv(s3, bucket: str, http_url: str) -> dict:
    """Absolute s3:// URLs; one row without an instruction."""
    lines = ["url,caption"]
    for i in range(5):
        _put(s3, bucket, f"csvimg/{i}.jpg", jpeg(300 + i))
        lines.append(f"s3://{bucket}/csvimg/{i}.jpg,{'' if i == 4 else 'turn it into a watercolor'}")
    _put(s3, bucket, "lists/rows.csv", ("\n".join(lines) + "\n").encode())
    return {"input": f"s3://{bucket}/lists/rows.csv", "expected": {i: "validate" if i == 4 else "ok" for i in range(5)}}


def build_jsonl(s3, bucket: str, http_url: str) -> dict:
    """HTTP URLs from a local server; a 404 (fetch error) and a line that is not JSON."""
    rows = [json.dumps({"url": f"{http_url}/h{i}.png", "instruction": "make the sky blue"}) for i in range(5)]
    rows[1] = json.dumps({"url": f"{http_url}/gone.png", "instruction": "make the sky blue"})
    rows.insert(3, "{not json")
    _put(s3, bucket, "web/rows.jsonl", ("\n".join(rows) + "\n").encode())
    expected = {i: "ok" for i in range(6)}
    expected[1], expected[3] = "fetch", "fetch"
    return {"input": f"s3://{bucket}/web/rows.jsonl", "expected": expected}


KINDS = {
    "folder": build_folder,
    "parquet-paths": build_parquet_paths,
    "parquet-hf-bytes": build_parquet_hf,
    "csv": build_csv,
    "jsonl-http": build_jsonl,
}


def _argv(spec: dict, output: str) -> list[str]:
    # --allow-private-urls: the images are served on loopback, which manifest URLs may not reach by default
    return [
        "edit",
        "--input",
        spec["input"],
        "--output",
        output,
        "--model",
        "noop",
        "--resolution",
        "32",
        "--unit-rows",
        str(UNIT_ROWS),
        "--resources",
        "cpu",
        "--no-progress",
        "--json",
        "--allow-private-urls",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_input_kind_killed_after_a_commit_then_resumed_is_exactly_once(kind, s3, ray_local, http_images, tmp_path):
    from jobs import cli
    from pipeline.ledger import load_state, read_ledger
    from pipeline.shards import read_members
    from pipeline.storage import Store

    bucket = s3.new_bucket("kind")
    spec = KINDS[kind](s3, bucket, http_images)
    output = f"s3://{bucket}/out"
    n_rows = len(spec["expected"])

    env = {**os.environ, **ray_local.env(), "MGIE_BATCH_FAULTS": "driver.kill_after_commit=1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *_argv(spec, output)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    store = Store.open(output)
    assert len(load_state(store).commits) == 1, "the driver should have died right after its first commit"

    assert cli.main(_argv(spec, output)) == 0  # the same command again
    summary = json.loads(store.read_bytes("summary.json"))
    assert summary["skipped"] == UNIT_ROWS and summary["complete"]
    assert summary["read"] == summary["ok"] + summary["error"] + summary["skipped"] == n_rows

    ledger = read_ledger(output).to_pylist()
    ids = Counter((r["source_shard"], r["row_index"]) for r in ledger)
    source = spec.get("source", spec["input"])
    assert set(ids) == {(source, i) for i in range(n_rows)} and max(ids.values()) == 1, ids
    by_index = {r["row_index"]: r for r in ledger}
    for i, want in spec["expected"].items():
        row = by_index[i]
        got = "ok" if row["status"] == "ok" else row["error_stage"]
        assert got == want, (i, row["status"], row["error_stage"], row["error"])
        if want == "ok":
            members = read_members(store.read_bytes(row["output_shard"]))
            edited = [m for m in members if m.split(".", 1)[0] == row["key"] and m.endswith((".png", ".jpg"))]
            assert len(edited) == 1, sorted(members)
            with Image.open(io.BytesIO(members[edited[0]])) as img:
                assert img.size == (20, 24)  # the input's own size (--output-size original, the default)
    if "keys" in spec:
        assert [by_index[i]["key"] for i in range(n_rows)] == spec["keys"]
    if kind == "jsonl-http":
        assert "404" in by_index[1]["error"] or "not found" in by_index[1]["error"], by_index[1]["error"]
        assert "not JSON" in by_index[3]["error"]
    state = load_state(store)
    assert not state.orphans and not state.stale_commits


class _SlowHandler(_QuietHandler):
    def do_GET(self):
        time.sleep(1.0)  # the first source's images take a while: an unordered run would commit others first
        super().do_GET()


@pytest.mark.slow
def test_limit_takes_the_inputs_in_the_order_given(s3, ray_local, tmp_path):
    from pipeline.config import EditConfig
    from pipeline.editors import ModelSpec
    from pipeline.ledger import read_ledger
    from pipeline.run import run_edit
    from pipeline.sources import SourceOptions

    folder = tmp_path / "slow"
    folder.mkdir()
    for i in range(4):
        (folder / f"s{i}.png").write_bytes(png(500 + i))
    with serving(functools.partial(_SlowHandler, directory=str(folder))) as url:
        bucket = s3.new_bucket("order")
        rows = [json.dumps({"url": f"{url}/s{i}.png", "instruction": "x"}) for i in range(4)]
        _put(s3, bucket, "first/rows.jsonl", "\n".join(rows).encode())
        for i in range(4):
            _put(s3, bucket, f"second/f{i}.png", png(600 + i))
        cfg = EditConfig.of(
            input=(f"s3://{bucket}/first/rows.jsonl", f"s3://{bucket}/second"),
            output=f"s3://{bucket}/out",
            model=ModelSpec("noop"),
            resolution=32,
            unit_rows=2,
            instruction="x",
            resources="cpu",
            progress=False,
            limit=2,
            source=SourceOptions(allow_private_urls=True),
        )  # images served on loopback
        summary = run_edit(cfg)
    assert not summary["complete"] and summary["ok"] == 2
    sources = {r["source_shard"] for r in read_ledger(cfg.io.output).to_pylist()}
    assert sources == {f"s3://{bucket}/first/rows.jsonl"}, sources
