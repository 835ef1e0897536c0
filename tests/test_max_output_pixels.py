"""`--max-output-pixels`: a photo too large for a full-size output is an error row of its own, refused from its
header before any decoding, so one huge photo cannot take a write task's memory."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pipeline.config import EditConfig
from pipeline.outputs import OutputSettings
from pipeline.rows import PENDING, pack, unpack
from pipeline.stages import DecodeSettings, decode_unit


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 150)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _decode(limit: int, sizes: dict[str, tuple[int, int]], loads: list | None = None, monkeypatch=None) -> dict:
    samples = [
        {"key": k, "status": PENDING, "fields": {"jpg": _jpeg(*wh), "txt": b"make it brighter"}}
        for k, wh in sizes.items()
    ]
    row = {"payload": pack(samples), "skip": False, "unit": "u", "attempt": 0}
    if monkeypatch is not None:  # from here on, every decode of pixel data is seen
        original = Image.Image.load
        monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or original(self))
    out = decode_unit(row, DecodeSettings(64, 0, None, OutputSettings(max_output_pixels=limit)))
    return {s["key"]: s for s in unpack(out["payload"])}


def test_a_photo_over_the_limit_is_an_error_row_and_the_others_decode(monkeypatch):
    loads: list = []
    rows = _decode(400 * 300, {"big": (600, 400), "fits": (400, 300)}, loads, monkeypatch)
    assert rows["fits"]["status"] == PENDING and rows["fits"]["input_size"] == (400, 300)
    big = rows["big"]
    assert big["status"] == "error" and big["error_stage"] == "decode"
    assert big["error"] == (
        "image 600x400 is 0.2 MP, over --max-output-pixels 120000 for a full-size output; use --output-size work "
        "or raise --max-output-pixels"
    )
    # refused from the header: no decode of the 3:2 photo at any draft scale, while the 4:3 one was decoded
    assert [wh for wh in loads if wh[0] * 3 == wh[1] * 4] and not [wh for wh in loads if wh[0] * 2 == wh[1] * 3]


def test_no_limit_by_default_and_a_negative_limit_is_refused():
    assert _decode(0, {"big": (600, 400)})["big"]["status"] == PENDING
    with pytest.raises(ValueError, match="--max-output-pixels must be >= 0"):
        EditConfig.of(input="in.tar", output="out", max_output_pixels=-1)
