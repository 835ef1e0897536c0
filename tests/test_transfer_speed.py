"""The fast output path keeps the pictures it made before: the fixed-point OpenCV transfer against the first
numpy implementation (bench/transfer_reference.py), and the working image from a JPEG decoded at a reduced
scale against the one from the full decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.detail_transfer import contrast, painted, tone
from bench.transfer_reference import box_mean_table, local_gain_reference, transfer_edit_reference
from mgie.images import work_image
from pipeline.outputs import box_mean, local_gain, transfer_edit
from pipeline.viewing import as_viewed_rgb
from pipeline.work_decode import draft_scale, work_image_at
from tests.photos import jpeg, photo, psnr

EDITS = {"tone": tone, "contrast": contrast, "painted": painted}


@pytest.fixture(
    scope="module",
    params=[("coffee", 2400, 1600, 512), ("astronaut", 1800, 1800, 512), ("chelsea", 2000, 1500, 32)],
    ids=lambda p: f"{p[0]}-{p[3]}px",
)
def photo_and_work(request):
    picture, width, height, resolution = request.param
    full = photo(width, height, seed=3, picture=picture)  # (H, W, 3)
    full.setflags(write=False)  # as the write stage hands it over (np.asarray of the decoded picture)
    return full, np.asarray(work_image(Image.fromarray(full), "fit", resolution))  # (h, w, 3)


@pytest.mark.parametrize("edit", EDITS)
def test_transfer_matches_the_reference_within_half_a_level(photo_and_work, edit):
    full, work = photo_and_work
    edited = EDITS[edit](work)
    out, reference = transfer_edit(full, work, edited), transfer_edit_reference(full, work, edited)
    assert out.shape == full.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.int16) - reference).mean() <= 0.5
    assert psnr(out, reference) >= 45.0


def test_transfer_takes_any_reference_image_at_the_working_size(photo_and_work):
    """`work_input` need not be the photo's own downscale (the VAE's round trip of it, say): the detail is
    taken against whatever is passed, exactly as the reference does."""
    full, work = photo_and_work
    blurred = np.asarray(
        Image.fromarray(work)
        .resize((work.shape[1] // 2, work.shape[0] // 2))
        .resize(work.shape[1::-1], Image.Resampling.BICUBIC)
    )  # (h, w, 3), softer than the photo's downscale
    edited = tone(work)
    out, reference = transfer_edit(full, blurred, edited), transfer_edit_reference(full, blurred, edited)
    assert psnr(out, reference) >= 45.0
    assert psnr(out, transfer_edit(full, work, edited)) < 45.0  # and it matters which one is passed


def test_box_mean_and_gain_match_the_summed_area_table():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (37, 53, 3))  # float64, odd sizes: the clamped edges count
    assert np.abs(box_mean(a, 2) - box_mean_table(a, 2)).max() < 1e-9
    x = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    y = np.clip(x * 0.7 + rng.normal(0, 5, x.shape), 0, 255).astype(np.uint8)
    assert np.abs(local_gain(x, y) - local_gain_reference(x, y)).max() < 1e-3


def _decoded(data: bytes, mode: str, resolution: int, reduced: bool):
    """(working image, upright full size) as the decode stage makes them, with or without the reduced decode."""
    with Image.open(io.BytesIO(data)) as img:
        scale = draft_scale(img, mode, resolution) if reduced else 1
        img.load()
        rgb = as_viewed_rgb(img)
    return np.asarray(work_image_at(rgb, scale, mode, resolution)), (rgb.width * scale, rgb.height * scale), scale


@pytest.mark.parametrize("mode", ["fit", "crop"])
@pytest.mark.parametrize("orientation", [None, 6, 3])
def test_reduced_jpeg_decode_gives_the_same_working_image(mode, orientation):
    data = jpeg(photo(2400, 1600, seed=4), orientation=orientation)
    exact, exact_size, _ = _decoded(data, mode, 256, reduced=False)
    fast, size, scale = _decoded(data, mode, 256, reduced=True)
    assert scale == (2 if mode == "crop" else 4)  # the largest that still holds twice the working size
    assert size == exact_size and fast.shape == exact.shape
    assert np.abs(fast.astype(np.int16) - exact).mean() <= 0.5  # grain and weave near Nyquist: the hard case
    assert psnr(fast, exact) >= 40.0


def test_reduced_decode_only_where_it_is_exact_and_needed():
    from tests.photos import png

    odd = jpeg(photo(1201, 801, seed=5))  # odd sides: a scaled decode's partial edge block would shift it
    big = jpeg(photo(1200, 800, seed=5))
    for data, mode, resolution, expected in (
        (odd, "fit", 64, 1),
        (big, "fit", 64, 8),
        (big, "fit", 512, 1),
        (big, "reference", 64, 1),
        (png(photo(1200, 800)), "fit", 64, 1),
    ):
        with Image.open(io.BytesIO(data)) as img:
            assert draft_scale(img, mode, resolution) == expected, (img.format, img.size, mode, resolution)
