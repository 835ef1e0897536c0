"""Benchmark converters on small fabricated samples in each published layout (MagicBrush zip and parquet,
EVR, GIER, MA5k): every good row lands in a shard WebDataset reads, every bad row is reported, none crash."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline.evaluation.benchmarks import convert_benchmark, safe_key


def _img(seed: int, fmt: str = "PNG", size=(24, 20)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _read_shards(out: Path) -> dict[str, dict]:
    rows = {}
    for shard in sorted(out.glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            assert sample["__key__"] not in rows, f"duplicate key {sample['__key__']}"
            rows[sample["__key__"]] = sample
    return rows


def _image_of(sample: dict, prefix: str = "") -> Image.Image:
    exts = [k for k in sample if k.startswith(prefix) and k.rsplit(".", 1)[-1] in ("jpg", "png", "webp")]
    if prefix == "":
        exts = [k for k in exts if not k.startswith("goal.")]
    assert len(exts) == 1, sorted(sample)
    return Image.open(io.BytesIO(sample[exts[0]]))


def test_magicbrush_test_split_layout(tmp_path):
    root = tmp_path / "MagicBrush" / "test"
    sessions = {
        "139": [
            {
                "input": "139-input.png",
                "mask": "139-mask1.png",
                "output": "139-output1.png",
                "instruction": "put a hat on the dog",
            },
            {
                "input": "139-output1.png",
                "mask": "139-mask2.png",
                "output": "139-output2.png",
                "instruction": "make the hat red",
            },
        ],
        "30": [
            {"input": "30-input.png", "mask": "30-mask1.png", "output": "30-output1.png", "instruction": "add snow"}
        ],
        "77": [
            {
                "input": "77-input.png",
                "mask": "77-mask1.png",
                "output": "77-output1.png",
                "instruction": "remove the car",
            }
        ],
    }
    _write(root / "edit_sessions.json", json.dumps(sessions))
    _write(root / "local_descriptions.json", json.dumps({"139": {"139-output1.png": "a dog wearing a hat"}}))
    for i, name in enumerate(
        ["139-input.png", "139-output1.png", "139-output2.png", "30-input.png", "30-output1.png", "77-input.png"]
    ):  # 77's output is missing
        _write(root / "images" / name.split("-")[0] / name, _img(i))
    out = tmp_path / "shards"
    report = convert_benchmark("magicbrush", str(root), str(out), shard_size=2)
    assert report["rows"] == 3 and report["skipped"] == 1
    assert "77-output1.png" in report["skipped_rows"][0]["reason"]
    assert [s["rows"] for s in report["shards"]] == [2, 1]
    assert json.loads((out / "conversion.json").read_text())["rows"] == 3

    rows = _read_shards(out)
    assert sorted(rows) == ["139_1", "139_2", "30_1"]
    r = rows["139_2"]
    assert r["txt"].decode() == "make the hat red"
    meta = json.loads(r["json"])
    assert meta["instruction"] == "make the hat red" and meta["turn"] == 2 and meta["benchmark"] == "magicbrush"
    # turn 2 starts from the ground truth of turn 1; the goal is turn 2's output
    assert r["png"] == (root / "images/139/139-output1.png").read_bytes()
    assert r["goal.png"] == (root / "images/139/139-output2.png").read_bytes()
    assert json.loads(rows["139_1"]["json"])["caption"] == "a dog wearing a hat"
    assert "caption" not in json.loads(rows["30_1"]["json"])


def test_magicbrush_parquet_layout(tmp_path):
    root = tmp_path / "hf" / "data"
    image_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [
            ("img_id", pa.string()),
            ("turn_index", pa.int32()),
            ("source_img", image_t),
            ("mask_img", image_t),
            ("instruction", pa.string()),
            ("target_img", image_t),
        ]
    )

    def rows(ids):
        return [
            {
                "img_id": i,
                "turn_index": 1,
                "source_img": {"bytes": _img(int(i), "JPEG"), "path": None},
                "mask_img": {"bytes": _img(99), "path": None},
                "instruction": f"edit {i}",
                "target_img": {"bytes": _img(int(i) + 50), "path": None},
            }
            for i in ids
        ]

    root.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows(["1", "2"]), schema=schema), root / "train-00000-of-00002.parquet")
    bad = rows(["3"]) + [{**rows(["4"])[0], "instruction": "  "}]
    pq.write_table(pa.Table.from_pylist(bad, schema=schema), root / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows(["5"]), schema=schema), root / "dev-00000-of-00001.parquet")

    out = tmp_path / "shards"
    report = convert_benchmark("magicbrush", str(tmp_path / "hf"), str(out), split="train")
    assert report["rows"] == 3 and report["skipped"] == 1 and "empty instruction" in report["skipped_rows"][0]["reason"]
    got = _read_shards(out)
    assert sorted(got) == ["1_1", "2_1", "3_1"]  # the dev file is another split
    assert got["2_1"]["jpg"][:2] == b"\xff\xd8" and got["2_1"]["goal.png"] == _img(52)
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        convert_benchmark("magicbrush", str(tmp_path / "hf"), str(tmp_path / "x"), split="test")


def test_evr_layout(tmp_path):
    root = tmp_path / "evr"
    pairs = [
        {
            "img0": "Reddit_a.jpg",
            "img1": "Reddit_a_1.jpg",
            "sents": ["brighten it", "", "more light"],
            "uid": "Reddit_1",
        },
        {"img0": "Reddit_b.gif", "img1": "Reddit_b_2.png", "sents": ["rotate the coin"], "uid": "Reddit_2"},
        {"img0": "Reddit_c.jpg", "img1": "Reddit_c_1.jpg", "sents": ["   "], "uid": "Reddit_3"},
    ]
    _write(root / "test.json", json.dumps(pairs))
    for i, name in enumerate(["Reddit_a.jpg", "Reddit_a_1.jpg", "Reddit_c.jpg", "Reddit_c_1.jpg"]):
        _write(root / "images" / name, _img(i, "JPEG"))
    _write(root / "images" / "Reddit_b.gif", _img(7, "GIF"))
    _write(root / "images" / "Reddit_b_2.png", _img(8))
    out = tmp_path / "shards"
    report = convert_benchmark("evr", str(root), str(out), split="test")
    assert (
        report["rows"] == 3 and report["skipped"] == 1 and "no non-empty request" in report["skipped_rows"][0]["reason"]
    )
    got = _read_shards(out)
    assert sorted(got) == ["Reddit_1_0", "Reddit_1_2", "Reddit_2_0"]
    assert got["Reddit_1_2"]["txt"] == b"more light"
    gif_row = got["Reddit_2_0"]
    assert "png" in gif_row and "gif" not in gif_row  # re-encoded: the pipeline reads jpg / png / webp
    assert _image_of(gif_row).size == (24, 20)
    first = convert_benchmark("evr", str(root), str(tmp_path / "first"), split="test", first_only=True)
    assert first["rows"] == 2


def test_gier_layout(tmp_path):
    root = tmp_path / "GIER"
    pairs = [
        {
            "input": "lHT34/lHT34.jpg",
            "output": "lHT34/jwtyK.jpg",
            "request": "two focus points",
            "dataset": "zhopped",
            "operator": {"brightness": {"local": False, "ids": []}, "tint": {"local": True, "ids": [1]}},
            "expert_summary": ["turn the image black and white"],
            "amateur_summary": ["make it grey"],
        },
        {
            "input": "x9/x9.jpg",
            "output": "x9/y.jpg",
            "request": "fix the light",
            "operator": {},
            "expert_summary": [],
            "amateur_summary": [],
        },
        {
            "input": "gone/gone.jpg",
            "output": "gone/g2.jpg",
            "request": "r",
            "operator": {},
            "expert_summary": ["e"],
            "amateur_summary": [],
        },
    ]
    _write(root / "GIER.json", json.dumps(pairs))
    for i, name in enumerate(["lHT34_lHT34.jpg", "lHT34_jwtyK.jpg", "x9_x9.jpg", "x9_y.jpg"]):
        _write(root / "images" / name, _img(i, "JPEG"))
    out = tmp_path / "shards"
    report = convert_benchmark("gier", str(root), str(out))
    assert report["rows"] == 3 and report["skipped"] == 1 and "gone_gone.jpg" in report["skipped_rows"][0]["reason"]
    got = _read_shards(out)
    assert sorted(got) == ["lHT34_lHT34_0", "lHT34_lHT34_1", "x9_x9_0"]
    assert got["lHT34_lHT34_1"]["txt"] == b"make it grey"
    assert json.loads(got["lHT34_lHT34_0"]["json"])["operators"] == ["brightness", "tint"]
    assert got["x9_x9_0"]["txt"] == b"fix the light"  # no summaries: the raw request
    # the split files of the release
    _write(root / "splits" / "test_sess_3.json", json.dumps(pairs[:1]))
    assert convert_benchmark("gier", str(root), str(tmp_path / "split"), split="test")["rows"] == 2


def test_ma5k_layout_and_limit(tmp_path):
    root = tmp_path / "FiveK"
    pairs = [
        {"input": "0001O.jpg", "output": "0001A.jpg", "request": "soften and sharpen"},
        {"input": "0001O.jpg", "output": "0001A.jpg", "request": "brighten the image"},
        {"input": "0002O.jpg", "output": "0002A.jpg", "request": ""},
        {"input": "0003O.jpg", "output": "0003A.jpg", "request": "more contrast"},
    ]
    _write(root / "FiveK.json", json.dumps(pairs))
    _write(root / "annotations" / "test_sess_1.json", json.dumps(pairs[3:]))
    for i, name in enumerate(["0001O.jpg", "0001A.jpg", "0002O.jpg", "0002A.jpg", "0003O.jpg", "0003A.jpg"]):
        _write(root / "images" / name, _img(i, "JPEG"))
    out = tmp_path / "shards"
    report = convert_benchmark("ma5k", str(root), str(out))
    assert report["rows"] == 3 and report["skipped"] == 1
    got = _read_shards(out)
    assert sorted(got) == ["0001O_0", "0001O_1", "0003O_0"]
    assert got["0001O_1"]["jpg"] == (root / "images/0001O.jpg").read_bytes()
    assert got["0001O_1"]["goal.jpg"] == (root / "images/0001A.jpg").read_bytes()
    assert convert_benchmark("ma5k", str(root), str(tmp_path / "t"), split="test")["rows"] == 1
    assert convert_benchmark("ma5k", str(root), str(tmp_path / "l"), limit=2)["rows"] == 2


def test_unreadable_images_and_bad_input_are_reported(tmp_path):
    root = tmp_path / "FiveK"
    _write(
        root / "FiveK.json",
        json.dumps(
            [
                {"input": "a.jpg", "output": "b.jpg", "request": "x"},
                {"input": "c.jpg", "output": "d.jpg", "request": "y"},
            ]
        ),
    )
    _write(root / "images" / "a.jpg", b"not an image at all")
    _write(root / "images" / "b.jpg", _img(1, "JPEG"))
    _write(root / "images" / "c.jpg", _img(2, "JPEG")[:40])  # truncated
    _write(root / "images" / "d.jpg", _img(3, "JPEG"))
    report = convert_benchmark("ma5k", str(root), str(tmp_path / "o"))
    assert report["rows"] == 0 and report["skipped"] == 2
    assert all("not a readable image" in s["reason"] for s in report["skipped_rows"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        convert_benchmark("imagenet", str(root), str(tmp_path / "o"))
    _write(tmp_path / "broken" / "FiveK.json", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        convert_benchmark("ma5k", str(tmp_path / "broken"), str(tmp_path / "o"))
    assert safe_key("a.b/c", 1) == "a_b_c_1"


def test_convert_from_and_to_the_s3_endpoint(tmp_path, s3):
    """Benchmark folder on S3 in, shards on S3 out, through the real local endpoint."""
    import fsspec

    bucket = s3.new_bucket("bench")
    fs = fsspec.filesystem("s3", **s3.storage_options())
    pairs = [
        {"input": "0001O.jpg", "output": "0001A.jpg", "request": "brighten"},
        {"input": "0002O.jpg", "output": "0002A.jpg", "request": "more contrast"},
    ]
    fs.pipe(f"{bucket}/FiveK/FiveK.json", json.dumps(pairs).encode())
    for i, name in enumerate(["0001O.jpg", "0001A.jpg", "0002O.jpg", "0002A.jpg"]):
        fs.pipe(f"{bucket}/FiveK/images/{name}", _img(i, "JPEG"))
    report = convert_benchmark(
        "ma5k", f"s3://{bucket}/FiveK", f"s3://{bucket}/shards", shard_size=1, storage_options=s3.storage_options()
    )
    assert report["rows"] == 2
    assert s3.list_keys(bucket, "shards/") == [
        "shards/conversion.json",
        "shards/ma5k-000000.tar",
        "shards/ma5k-000001.tar",
    ]
    local = tmp_path / "copy"
    local.mkdir()
    for key in ("ma5k-000000.tar", "ma5k-000001.tar"):
        (local / key).write_bytes(fs.cat(f"{bucket}/shards/{key}"))
    got = _read_shards(local)
    assert sorted(got) == ["0001O_0", "0002O_0"] and got["0002O_0"]["txt"] == b"more contrast"
