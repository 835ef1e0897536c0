"""Outputs end to end over the local S3 endpoint with the tiny MGIE: photos of four shapes and kinds come
back at their own size and orientation, in the requested format, profile kept, ledger columns filled;
--resize crop / reference; a unit of mixed shapes edited in batches equals the same rows edited alone;
auto-QA with a tiny random CLIP, its failures exported by `mgie-batch status --qa-failed --json`."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import EditConfig
from pipeline.ledger import read_ledger
from pipeline.run import run_edit
from pipeline.shards import read_members, write_samples
from pipeline.storage import Store
from pipeline.viewing import as_viewed_rgb
from tests.cmyk_profile import press_icc
from tests.photos import EXIF_MAKE, EXIF_ORIENTATION, jpeg, photo, png, srgb_icc

# key -> (encoded input, upright size, PIL format, ICC profile)
INPUTS = {
    "wide": (lambda: png(photo(900, 600, seed=1)), (900, 600), "PNG", None),
    "tall": (lambda: jpeg(photo(333, 777, seed=2), icc=srgb_icc()), (333, 777), "JPEG", srgb_icc()),
    "rotated": (lambda: jpeg(photo(2048, 1365, seed=3), orientation=6), (1365, 2048), "JPEG", None),
    # a real press profile: decoded through it to sRGB, written back through it as CMYK
    "cmyk": (lambda: jpeg(photo(640, 427, seed=4), icc=press_icc(), cmyk=True), (640, 427), "JPEG", press_icc()),
}
RESOLUTION = 32  # the tiny model's: fit gives 32 x 24, 16 x 32, 24 x 32, 32 x 24 (mixed shapes in one unit)


@pytest.fixture(scope="module")
def shard(s3):
    bucket = s3.new_bucket("outputs")
    samples = [
        (key, {ext: make(), "txt": b"make it warmer"})
        for key, (make, _, fmt, _) in INPUTS.items()
        for ext in [{"PNG": "png", "JPEG": "jpg"}[fmt]]
    ]
    small = [
        ("small", {"png": png(photo(45, 70, seed=5)), "txt": b"add snow"}),
        ("large", {"png": png(photo(130, 90, seed=6)), "txt": b"add snow"}),
    ]
    client = s3.client()
    client.put_object(Bucket=bucket, Key="in/photos.tar", Body=write_samples(samples))
    client.put_object(Bucket=bucket, Key="in-small/small.tar", Body=write_samples(small))
    return bucket


def _members(store: Store, rel: str) -> dict[str, bytes]:
    """An output file's images as tar member names: `<key>.<ext>`, `<key>.input.<ext>` (either format)."""
    if not rel.endswith(".parquet"):
        return read_members(store.read_bytes(rel))
    import pyarrow.parquet as pq

    with store.fs.open(store.path(rel), "rb") as f:
        table = pq.read_table(f).to_pylist()
    out = {}
    for row in table:
        for infix, column in (("", "image"), ("input.", "input_image")):
            if row.get(column) is not None:
                out[f"{row['key']}.{infix}{row['image_format']}"] = row[column]
    return out


def _run(bucket: str, output: str, source: str = "in/photos.tar", **kw) -> dict:
    out = f"s3://{bucket}/{output}"
    summary = run_edit(
        EditConfig.of(input=f"s3://{bucket}/{source}", output=out, unit_rows=8, resources="cpu", progress=False, **kw)
    )
    store = Store.open(out)
    rows = {r["key"]: r for r in read_ledger(out).to_pylist()}
    members = {}
    for rel in {r["output_shard"] for r in rows.values() if r["output_shard"]}:
        members.update(_members(store, rel))
    return {"summary": summary, "rows": rows, "members": members}


@pytest.fixture(scope="module")
def default_run(shard, ray_local):
    return _run(shard, "out-default")


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_default_outputs_have_the_input_size_orientation_format_and_profile(default_run):
    rows, members = default_run["rows"], default_run["members"]
    assert default_run["summary"]["ok"] == len(INPUTS) and default_run["summary"]["error"] == 0
    for key, (_, size, fmt, icc) in INPUTS.items():
        ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
        data = members[f"{key}.{ext}"]
        img = _open(data)
        assert img.format == fmt and img.size == size, (key, img.format, img.size)
        assert img.info.get("icc_profile") == icc, key
        assert img.mode == ("CMYK" if key == "cmyk" else "RGB")
        if fmt == "JPEG":
            exif = img.getexif()
            assert exif[EXIF_MAKE] == "TestCam" and exif.get(EXIF_ORIENTATION, 1) == 1, key  # upright, once
        row = rows[key]
        work = (row["work_width"], row["work_height"])
        assert (row["input_width"], row["input_height"]) == (row["output_width"], row["output_height"]) == size
        assert max(work) == RESOLUTION and work[0] % 8 == 0 and work[1] % 8 == 0, (key, work)
        assert row["resize"] == "fit" and row["output_sha256"] == hashlib.sha256(data).hexdigest()
        assert row["qa_change"] > 0 and -1 <= row["qa_ssim"] < 1 and row["qa_pass"] is None  # no QA bounds set
        assert row["qa_clip_t"] is None and row["qa_clip_dir"] is None  # no --qa-clip
        assert row["output_member"] == f"{key}.{ext}"
    assert rows["rotated"]["work_height"] > rows["rotated"]["work_width"]  # the model saw it upright too


def test_mixed_shapes_edited_in_batches_equal_the_rows_edited_alone(shard, default_run):
    """The default run diffused the unit's four shapes in size buckets (batch size 4); one row per
    diffusion call must give the same bytes."""
    assert len({(r["work_width"], r["work_height"]) for r in default_run["rows"].values()}) == 3
    alone = _run(shard, "out-alone", batch_size=1)
    assert alone["summary"]["run_fingerprint"] == default_run["summary"]["run_fingerprint"]
    assert alone["members"].keys() == default_run["members"].keys()
    for name, data in alone["members"].items():
        if name.endswith(".json"):
            assert data == default_run["members"][name], name
            continue
        # one 8-bit level may turn at a rounding boundary (tests/test_outputs.py), JPEG spreads it a little;
        # compared as seen: CMYK through its profile, where the separation may trade a level of K for several
        # of C, M and Y and JPEG spreads that over four channels: up to 4 levels on up to 0.5 % of pixels there
        a, b = (np.asarray(as_viewed_rgb(_open(d)), np.int16) for d in (data, default_run["members"][name]))
        most, share = (4, 0.005) if name.startswith("cmyk.") else (2, 0.002)
        assert a.shape == b.shape and np.abs(a - b).max() <= most and (a != b).mean() < share, name


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_crop_in_webp_with_input_copies(shard, default_run, fmt):
    """In Parquet the copies are an `input_image` column beside `image`, one row per input row."""
    run = _run(
        shard, f"out-crop-{fmt}", resize="crop", image_format="webp", quality=80, copy_input=True, output_format=fmt
    )
    assert run["summary"]["run_fingerprint"] != default_run["summary"]["run_fingerprint"]
    for key, (_, size, _, _) in INPUTS.items():
        side = min(size)
        for member in (f"{key}.webp", f"{key}.input.webp"):
            img = _open(run["members"][member])
            assert img.format == "WEBP" and img.size == (side, side), (member, img.size)
        row = run["rows"][key]
        assert (row["work_width"], row["work_height"], row["output_width"], row["resize"]) == (32, 32, side, "crop")
        assert row["output_sha256"] == hashlib.sha256(run["members"][f"{key}.webp"]).hexdigest()


def test_reference_edits_the_raw_size_and_refuses_large_images(shard, ray_local):
    run = _run(
        shard,
        "out-reference",
        source="in-small/small.tar",
        resize="reference",
        max_pixels=4000,
        output_size="work",
        qa_max_change=0.5,
    )  # the tiny model's noise is no small edit: QA fails
    small, large = run["rows"]["small"], run["rows"]["large"]
    assert small["status"] == "ok" and (small["work_width"], small["work_height"]) == (40, 64)
    assert _open(run["members"]["small.png"]).size == (40, 64)
    assert large["status"] == "error" and large["error_stage"] == "decode"
    assert "image 128x88 at --resize reference is 11264 pixels, over --max-pixels 4000" in large["error"]
    assert (large["input_width"], large["input_height"], large["output_sha256"]) == (130, 90, None)
    assert small["qa_pass"] is False and small["qa_change"] > 0.5 and large["qa_pass"] is None
    from pipeline.reporting.status import format_status, output_status

    status = output_status(f"s3://{shard}/out-reference")
    assert status["qa_failed"] == 1 and status["status"] == {"ok": 1, "error": 1}
    assert "auto-QA      1 ok rows outside the --qa-min-*/--qa-max-* bounds" in format_status(status)


def test_clip_qa_fills_its_columns_and_the_failures_export_as_json(shard, ray_local, tiny_clip, capsys):
    from jobs import cli

    run = _run(shard, "out-clip", output_size="work", qa_clip=str(tiny_clip), qa_min_clip_dir=0.999)
    rows = run["rows"]
    assert run["summary"]["ok"] == len(INPUTS)
    for key, row in rows.items():
        assert -1 <= row["qa_clip_t"] <= 1 and -1 <= row["qa_clip_dir"] <= 1, key
        assert row["qa_pass"] is False  # a random CLIP sees no edit going where the instruction points
    capsys.readouterr()
    assert cli.main(["status", f"s3://{shard}/out-clip", "--qa-failed", "--json"]) == 0
    failed = json.loads(capsys.readouterr().out)
    assert sorted(r["key"] for r in failed) == sorted(INPUTS)
    for r in failed:
        assert r["output_member"] in run["members"] and r["output_shard"].startswith("shards/")
        assert r["qa_clip_dir"] == rows[r["key"]]["qa_clip_dir"] and r["source_shard"].endswith("in/photos.tar")
    assert cli.main(["status", f"s3://{shard}/out-clip", "--qa-failed"]) == 0
    assert f"{len(INPUTS)} ok rows failed auto-QA:" in capsys.readouterr().out


def test_a_bad_clip_path_is_refused_before_any_work(s3, shard):
    out = f"s3://{shard}/out-no-clip"
    with pytest.raises(FileNotFoundError, match="--qa-clip .*: no such folder"):
        run_edit(
            EditConfig.of(
                input=f"s3://{shard}/in/photos.tar",
                output=out,
                resources="cpu",
                progress=False,
                qa_clip=f"s3://{shard}/no-such-clip",
            )
        )
    assert not [k for k in s3.list_keys(shard) if k.startswith("out-no-clip/")]  # nothing written, not even a lease
