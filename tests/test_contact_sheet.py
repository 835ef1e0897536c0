"""The before/after contact sheet reads an output's tar shards through the format's one reader
(pipeline.writers.webdataset.iter_shard_rows): rows that kept their input, in key order or the order asked."""

from __future__ import annotations

import io
import json

from PIL import Image

from pipeline.reporting.contact_sheet import sheet_rows, write_contact_sheet
from pipeline.shards import tar_bytes
from pipeline.writers.webdataset import iter_shard_rows


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (value, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _meta(i: int) -> bytes:
    return json.dumps({"instruction": f"do {i}", "expressive_instruction": f"did {i}"}).encode()


def _output(tmp_path):
    (tmp_path / "shards").mkdir()
    # shard b sorts after a; in a, row k2 kept no input (a run without --copy-input, or a half-written row)
    (tmp_path / "shards" / "b.tar").write_bytes(
        tar_bytes([("k0.png", _png(10)), ("k0.input.png", _png(11)), ("k0.json", _meta(0))])
    )
    (tmp_path / "shards" / "a.tar").write_bytes(
        tar_bytes(
            [("k3.jpg", _png(30)), ("k3.input.png", _png(31)), ("k3.json", _meta(3)), ("k2.png", _png(20))]
            + [("k2.json", _meta(2))]
        )
    )
    return str(tmp_path)


def test_the_reader_gives_each_row_its_images_by_role_and_its_json_in_shard_order(tmp_path):
    rows = list(iter_shard_rows(_output(tmp_path)))
    assert [r.key for r in rows] == ["k3", "k2", "k0"]
    assert set(rows[0].images) == {"image", "input"} and rows[0].images["image"] == _png(30)
    assert set(rows[1].images) == {"image"} and rows[1].meta["expressive_instruction"] == "did 2"


def test_sheet_rows_keep_rows_with_inputs_in_key_order_or_the_order_asked(tmp_path):
    out = _output(tmp_path)
    assert [r["key"] for r in sheet_rows(out, 10)] == ["k0", "k3"]
    assert [r["key"] for r in sheet_rows(out, 10, keys=["k3", "k2", "k0"])] == ["k3", "k0"]
    first = sheet_rows(out, 1)[0]
    assert (first["instruction"], first["expressive"], first["input"]) == ("do 0", "did 0", _png(11))
    assert write_contact_sheet(out, str(tmp_path / "sheet.png")) == 2
    assert Image.open(tmp_path / "sheet.png").width > 48
