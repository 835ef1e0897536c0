"""Outputs a retoucher can ship, below the pipeline: working sizes, size buckets, the full-size detail
transfer on a photo-like 2400 x 1600 image, and the encoder's formats and metadata."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mgie.images import RESIZE_MODES, fit_work_size, reference_work_size, work_image, work_region, work_size
from pipeline import colour, outputs
from pipeline.model_stages import sub_batches, work_size_bucket
from pipeline.outputs import OutputSettings, encode_image, open_source, render_images, transfer_edit
from pipeline.viewing import as_viewed_rgb
from tests.cmyk_profile import press_icc, press_srgb
from tests.photos import EXIF_MAKE, EXIF_ORIENTATION, cmyk_icc, jpeg, laplacian_variance, photo, png, psnr, srgb_icc

# ------------------------------------------------------------------------------------------ working sizes


@pytest.mark.parametrize(
    "size,expected",
    [
        ((900, 600), (512, 344)),
        ((333, 777), (216, 512)),
        ((2048, 1365), (512, 344)),
        ((512, 512), (512, 512)),
        ((5000, 10), (512, 8)),
        ((1, 1), (512, 512)),
    ],
)
def test_fit_keeps_the_aspect_ratio_with_sides_multiples_of_8(size, expected):
    w, h = fit_work_size(*size, 512)
    assert (w, h) == expected and w % 8 == 0 and h % 8 == 0 and max(w, h) == 512


def test_crop_and_reference_sizes_and_regions():
    assert work_size(900, 600, "crop", 512) == (512, 512)
    assert work_region(900, 600, "crop") == (150, 0, 750, 600)
    assert work_region(900, 600, "fit") == work_region(900, 600, "reference") == (0, 0, 900, 600)
    assert work_size(1003, 605, "reference", 512) == reference_work_size(1003, 605) == (1000, 600)
    with pytest.raises(ValueError, match="smaller than 8"):
        reference_work_size(7, 600)
    with pytest.raises(ValueError, match="resize mode must be one of fit, crop, reference"):
        work_size(10, 10, "stretch", 512)
    assert outputs.RESIZE_MODES == RESIZE_MODES  # the torch-free copy the CLI and config check against


def test_work_image_sizes():
    img = Image.fromarray(photo(90, 60), "RGB")
    assert work_image(img, "fit", 32).size == (32, 24)
    assert work_image(img, "crop", 32).size == (32, 32)
    assert work_image(img, "reference", 32).size == (88, 56)


def test_an_sd_depth_unet_runs_at_latent_sizes_that_are_not_multiples_of_its_64_px_stride():
    """The reason sides are multiples of 8 and not 64: three down-samplings of a 75 x 43 latent
    (600 x 344 px) come back to 75 x 43 in diffusers' UNet (it passes each up block the skip's size)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    with torch.no_grad():
        out = unet(torch.randn(1, 8, 43, 75), 10, encoder_hidden_states=torch.randn(1, 77, 32)).sample
    assert out.shape == (1, 4, 43, 75) and torch.isfinite(out).all()


def test_diffusion_sub_batches_hold_one_working_size_each_in_a_fixed_order():
    shapes = [(24, 32), (32, 32), (24, 32), (32, 24), (24, 32), (32, 32)]
    samples = [
        {"key": f"k{i}", "status": "pending", "pixels": np.zeros((*s, 3), np.uint8)} for i, s in enumerate(shapes)
    ]
    batches = sub_batches(samples, 2, work_size_bucket)
    assert [[s["key"] for s in b] for b in batches] == [["k0", "k2"], ["k4"], ["k1", "k5"], ["k3"]]
    assert sub_batches(samples, 2, work_size_bucket) == batches
    assert [len(b) for b in sub_batches(samples, 4)] == [4, 2]  # without a bucket: row order, mixed sizes


# ---------------------------------------------------------------------------------- full-size detail


def _tone_edit(pixels: np.ndarray) -> np.ndarray:
    """A global edit: brighter midtones (gamma 0.8) and warmer (red up, blue down)."""
    f = 255 * (pixels.astype(np.float32) / 255) ** 0.8 * np.array([1.05, 1.0, 0.92], np.float32)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def big_photo():
    full = photo(2400, 1600)  # (1600, 2400, 3), fine texture the 512-px working image cannot hold
    work = np.asarray(work_image(Image.fromarray(full), "fit", 512))  # (344, 512, 3)
    return full, work


def _downscaled(pixels: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(like.shape[1::-1], Image.Resampling.LANCZOS))


def test_full_size_output_is_the_model_edit_downscaled_and_keeps_the_input_detail(big_photo):
    full, work = big_photo
    edited = _tone_edit(work)
    out = transfer_edit(full, work, edited)
    assert out.shape == full.shape and out.dtype == np.uint8
    assert psnr(_downscaled(out, work), edited) >= 35.0  # (a) what the model made, at the working size
    assert laplacian_variance(out) >= 0.9 * laplacian_variance(full)  # (b) the fine detail survived
    assert psnr(out, _tone_edit(full)) >= 35.0  # close to the same edit made at full size
    # the control: plain upsampling of the edit matches (a) too but loses the detail, so (b) can fail
    plain = np.asarray(Image.fromarray(edited).resize(full.shape[1::-1], Image.Resampling.BICUBIC))
    assert laplacian_variance(plain) < 0.5 * laplacian_variance(full)


def _largest_line_jump(out: np.ndarray, ideal: np.ndarray) -> float:
    """The largest step, between neighbouring columns or rows, of the mean signed error against the ideal:
    a seam (a tile edge, an off-by-one in the upsampling) is a line where the error jumps."""
    error = (out.astype(np.float64) - ideal.astype(np.float64)).mean(axis=2)  # (H, W)
    return max(float(np.abs(np.diff(error.mean(axis=axis))).max()) for axis in (0, 1))


def test_full_size_output_has_no_seams(big_photo):
    """(c) No row or column where the error against the same edit made at full size jumps; the control,
    a right half one 8-bit level brighter (what two tiles drifting apart look like), is caught."""
    full, work = big_photo
    out, ideal = transfer_edit(full, work, _tone_edit(work)), _tone_edit(full)
    assert _largest_line_jump(out, ideal) < 0.5
    tiled = out.copy()
    tiled[:, 1200:] = np.clip(tiled[:, 1200:].astype(int) + 1, 0, 255)
    assert _largest_line_jump(tiled, ideal) > 0.8


def test_painted_content_shows_less_of_the_old_texture_than_adding_the_difference(big_photo):
    """Where the model painted a flat patch, the input's grain comes back scaled down by the local gain;
    adding the upsampled difference (edited - input) would bring all of it back."""
    full, work = big_photo
    edited = work.copy()
    edited[100:240, 150:350] = (200, 40, 40)
    out = transfer_edit(full, work, edited)
    inner = (
        slice(100 * 1600 // 344 + 40, 240 * 1600 // 344 - 40),
        slice(150 * 2400 // 512 + 40, 350 * 2400 // 512 - 40),
    )

    def up(a):  # (h, w, 3) -> (1600, 2400, 3), each channel resized as float
        channels = [Image.fromarray(a[..., c].astype(np.float32), "F") for c in range(3)]
        return np.stack([np.asarray(ch.resize((2400, 1600), Image.Resampling.BICUBIC)) for ch in channels], axis=-1)

    added = np.clip(np.rint(full + up(edited.astype(np.float32) - work)), 0, 255)  # (H, W, 3)
    texture = lambda a: a[inner].astype(np.float64).std(axis=(0, 1)).max()  # noqa: E731
    assert texture(out) <= 0.6 * texture(added), (texture(out), texture(added))
    assert np.abs(out[inner].astype(np.float64).mean(axis=(0, 1)) - (200, 40, 40)).max() <= 3


# ------------------------------------------------------------------------------------ encoder and metadata


def _row(data: bytes, work: np.ndarray, edited: np.ndarray | None = None) -> dict:
    return {"key": "k", "source": data, "pixels": work, "edited": work if edited is None else edited}


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_exif_rotated_jpeg_comes_back_upright_full_size_with_its_metadata():
    stored = photo(600, 400, seed=1)  # as stored: landscape, EXIF says turn it 90 degrees
    data = jpeg(stored, orientation=6, icc=srgb_icc())
    src = open_source(data)
    assert src.upright.size == (400, 600) and src.family == "jpg"
    work = np.asarray(work_image(src.upright, "fit", 64))  # (64, 40, 3)
    [edited] = render_images(_row(data, work), OutputSettings(), with_input=False)
    img = _open(edited.data)
    assert edited.member == "k.jpg" and img.format == "JPEG" and img.size == (400, 600) == (edited.width, edited.height)
    assert img.getexif()[EXIF_ORIENTATION] == 1 and img.getexif()[EXIF_MAKE] == "TestCam"
    assert img.info["icc_profile"] == srgb_icc()
    assert psnr(np.asarray(img), np.asarray(src.upright)) > 30  # an identity edit gives the input back
    [stripped] = render_images(_row(data, work), OutputSettings(strip_metadata=True), with_input=False)
    assert not _open(stripped.data).getexif() and _open(stripped.data).info["icc_profile"] == srgb_icc()


def test_cmyk_jpeg_stays_cmyk_with_its_profile():
    """A profile LittleCMS cannot read (a bare header): PIL's plain conversion both ways, the profile kept."""
    data = jpeg(photo(120, 80, seed=2), icc=cmyk_icc(), cmyk=True)
    src = open_source(data)
    work = np.asarray(work_image(src.upright, "fit", 32))
    [jpg] = render_images(_row(data, work), OutputSettings(), with_input=False)
    img = _open(jpg.data)
    assert img.mode == "CMYK" and img.size == (120, 80) and img.info["icc_profile"] == cmyk_icc()
    [as_png] = render_images(_row(data, work), OutputSettings(image_format="png"), with_input=False)
    img = _open(as_png.data)
    assert img.format == "PNG" and img.mode == "RGB" and "icc_profile" not in img.info  # no CMYK profile on RGB


PATCHES = [(255, 0, 0, 0), (0, 255, 0, 0), (60, 120, 30, 20), (0, 0, 0, 128)]  # cyan, magenta, a mix, 50 % black


def _cmyk_patches(icc: bytes | None) -> bytes:
    """A CMYK JPEG of four flat 32 x 32 patches side by side (flat blocks: JPEG keeps them exactly)."""
    img = Image.new("CMYK", (32 * len(PATCHES), 32))
    for i, patch in enumerate(PATCHES):
        img.paste(patch, (32 * i, 0, 32 * i + 32, 32))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=100, subsampling=0, **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


def _patch_colours(img: Image.Image) -> np.ndarray:
    """(4, 3): the colour at each patch's centre, after decoding as the pipeline does."""
    rgb = np.asarray(as_viewed_rgb(img), np.int64)
    return rgb[16, [32 * i + 16 for i in range(len(PATCHES))]]


def test_cmyk_jpeg_is_colour_managed_through_its_embedded_profile():
    """A real press profile (tests/cmyk_profile.py): its colours, not PIL's formula, both ways."""
    data = _cmyk_patches(press_icc())
    expected = press_srgb(PATCHES).astype(np.int64)  # cyan prints (63, 179, 237), not (0, 255, 255)
    managed = _patch_colours(_open(data))
    naive = np.asarray(_open(data).convert("RGB"), np.int64)[16, [32 * i + 16 for i in range(len(PATCHES))]]
    assert np.abs(managed - expected).max() <= 3, (managed, expected)  # black-point compensation moves a few levels
    assert np.abs(naive - expected).max() > 60 and naive[0].tolist() == [0, 255, 255]
    assert _patch_colours(_open(_cmyk_patches(None))).tolist() == naive.tolist()  # no profile: the plain default

    work = np.asarray(open_source(data).upright)  # an identity edit at the input's own size
    [jpg] = render_images(_row(data, work), OutputSettings(resize="reference"), with_input=False)
    out = _open(jpg.data)
    assert out.mode == "CMYK" and out.info["icc_profile"] == press_icc()  # separated through the same profile
    assert np.abs(_patch_colours(out) - expected).max() <= 8  # the round trip keeps the colour
    [as_png] = render_images(_row(data, work), OutputSettings(resize="reference", image_format="png"), False)
    out = _open(as_png.data)
    assert out.mode == "RGB" and out.info["icc_profile"] == colour.srgb_icc()  # sRGB pixels, said so
    assert np.abs(_patch_colours(out) - expected).max() <= 3


@pytest.mark.parametrize("fmt,pil", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_requested_format_quality_and_the_input_copy(fmt, pil):
    data = png(photo(90, 60, seed=3))
    work = np.asarray(work_image(_open(data).convert("RGB"), "crop", 32))
    got = render_images(
        _row(data, work, edited=255 - work), OutputSettings(resize="crop", image_format=fmt), with_input=True
    )
    assert [g.member for g in got] == [f"k.{fmt}", f"k.input.{fmt}"]
    for g in got:
        img = _open(g.data)
        assert img.format == pil and img.size == (60, 60)  # the centre square at its own size
    low = render_images(_row(data, work), OutputSettings(resize="crop", image_format=fmt, quality=20), with_input=False)
    assert (len(low[0].data) < len(got[1].data)) == (fmt != "png")  # quality matters for the lossy formats
    work_size_out = render_images(_row(data, work), OutputSettings(output_size="work", image_format=fmt), False)
    assert _open(work_size_out[0].data).size == (32, 32)


def test_settings_refuse_bad_values_with_the_flag_name():
    with pytest.raises(ValueError, match="--image-format must be one of jpg, png, webp, got 'tiff'"):
        OutputSettings(image_format="tiff")
    with pytest.raises(ValueError, match="--quality must be in 1..100"):
        OutputSettings(quality=0)
    with pytest.raises(ValueError, match="--output-size"):
        OutputSettings(output_size="full")


def test_encode_keeps_only_a_profile_of_the_output_colour_space():
    src = outputs.SourceImage(upright=None, mode="L", family="png", icc=b"\0" * 16 + b"GRAY" + b"\0" * 108, exif=b"")
    img = _open(encode_image(np.zeros((8, 8, 3), np.uint8), "png", 95, src, False))
    assert "icc_profile" not in img.info


def test_edit_stage_diffuses_mixed_shapes_in_buckets_and_equals_single_edits():
    """Rows of three working sizes in one unit: each diffusion call gets one size (no call refused and
    redone row by row), and the pixels equal those of one row per call."""
    from pipeline import rows
    from pipeline.editors import ModelSpec
    from pipeline.identity import SamplerSettings
    from pipeline.model_stages import EditStage

    rng = np.random.default_rng(0)
    shapes = [(24, 32), (32, 16), (24, 32), (32, 24), (24, 32)]
    samples = [
        {
            "key": f"k{i}",
            "row_index": i,
            "status": rows.PENDING,
            "seed": 100 + i,
            "pixels": rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
            "conditioning": rng.standard_normal((77, 32)).astype(np.float32),
        }
        for i, shape in enumerate(shapes)
    ]

    def edit(batch_size: int) -> tuple[list[dict], list[list[tuple]]]:
        stage = EditStage(ModelSpec("tiny"), batch_size=batch_size, sample=SamplerSettings(2, 7.5, 1.5, 32))
        calls: list[list[tuple]] = []
        model_sample = stage.editor.sample

        def recording(images, *args, **kwargs):
            calls.append([img.size for img in images])
            return model_sample(images, *args, **kwargs)

        stage.editor.sample = recording
        out = stage({"payload": rows.pack(samples), "skip": False})
        return rows.unpack(out["payload"]), calls

    batched, calls = edit(batch_size=4)
    assert calls == [[(32, 24)] * 3, [(16, 32)], [(24, 32)]]  # one size per call, buckets in row order
    alone, single_calls = edit(batch_size=1)
    assert len(single_calls) == 5
    for a, b in zip(batched, alone):
        assert a["status"] == b["status"] == rows.PENDING and a["edited"].shape == a["pixels"].shape
        # the sampler's floats agree within 1e-5 batched or alone (tests/test_mgie_model.py); a value that
        # lands on a rounding boundary may still turn one 8-bit level (k4 here has one such pixel)
        diff = np.abs(a["edited"].astype(int) - b["edited"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.002, (a["key"], diff.max(), (diff > 0).sum())


def test_output_settings_join_the_run_fingerprint():
    from pipeline.config import EditConfig
    from pipeline.editors import ModelSpec
    from pipeline.identity import fingerprint_of, identity_diff, resolve_sampler, run_identity

    def identity(**overrides):
        cfg = EditConfig.of(input="x", output="y", **overrides)
        model = ModelSpec("tiny").describe()
        sampler, seed = resolve_sampler(cfg.sampling, model["config"])
        return run_identity(cfg, model, sampler, seed)

    base = identity()
    for change in (
        {"resize": "crop"},
        {"max_pixels": 4096},
        {"output_size": "work"},
        {"image_format": "png"},
        {"quality": 90},
        {"strip_metadata": True},
        {"copy_input": True},
        {"qa_min_change": 1.0},
        {"qa_max_change": 50.0},
    ):
        assert fingerprint_of(identity(**change)) != fingerprint_of(base), change
    assert identity_diff(base, identity(resize="crop")) == ["outputs.resize: 'fit' -> 'crop'"]
    with pytest.raises(ValueError, match="--resize must be one of fit, crop, reference"):
        EditConfig.of(input="x", output="y", resize="square")


def test_every_decodable_input_of_the_bad_input_suite_fits():
    """The reliability suite's odd inputs (one pixel, 1000:1, 16-bit, palette, EXIF-rotated...) all decode
    under --resize fit to a working image with sides multiples of 8 and the longer side at the resolution."""
    from pipeline import rows, stages
    from pipeline.shards import iter_samples
    from tests.badinputs import build_suite

    SUITE = build_suite()

    checked = 0
    for expected in (r for r in SUITE.rows if r.expect.decoded is not None):
        fields = [f for k, f in iter_samples(io.BytesIO(SUITE.shards[expected.shard])) if k == expected.key][
            expected.occurrence
        ]
        unit = {
            "skip": False,
            "payload": rows.pack([{"key": expected.key, "row_index": 0, "status": rows.PENDING, "fields": fields}]),
        }
        out = rows.unpack(stages.decode_unit(unit, stages.DecodeSettings(32, 0, None))["payload"])[0]
        assert out["status"] == rows.PENDING, (expected.key, out.get("error"))
        h, w, _ = out["pixels"].shape
        assert h % 8 == 0 and w % 8 == 0 and max(h, w) == 32 and (w, h) == out["work_size"], (expected.key, w, h)
        checked += 1
    assert checked >= 8


def test_metadata_without_decoding_the_picture():
    data = jpeg(photo(64, 48, seed=9), orientation=6, icc=srgb_icc())
    meta, full = open_source(data, pixels=False), open_source(data)
    assert meta.upright is None and full.upright.size == (48, 64)
    assert (meta.mode, meta.family, meta.icc, meta.exif) == (full.mode, full.family, full.icc, full.exif)
