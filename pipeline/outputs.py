"""What a row's output image is: its size, its pixels at that size, its file format and metadata.

    OutputSettings   the run's output flags: --resize, --output-size, --image-format, --quality, ...
    open_source      the encoded input -> upright RGB + the ICC profile and EXIF to carry over
    transfer_edit    the working-size edit carried to the input's full resolution (detail kept)
    render_images    one row -> its encoded members: `<key>.<ext>` (and `<key>.input.<ext>`)

The model edits a working image (mgie.images.work_image: fit, crop or reference). With `--output-size
original` the edit comes back at the input's own size and orientation: the edited image is upsampled and
the input's own fine detail (what the working size cannot hold) is added back, scaled by the edit's local
gain (`transfer_edit`; docs/pipeline.md "Outputs" has the measurements behind the choice).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from typing import Any, Literal

from pipeline.settings import check_choices, setting
from pipeline.writers.base import OUTPUT_FORMATS

RESIZE_MODES = ("fit", "crop", "reference")  # = mgie.images.RESIZE_MODES, here without importing torch
OUTPUT_SIZES = ("original", "work")
IMAGE_FORMATS = ("jpg", "png", "webp")
EXIF_ORIENTATION = 0x0112
_FAMILY = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}  # PIL format -> output family
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass(frozen=True)
class OutputSettings:
    """The output images and files: their size, format and metadata. All join the run's fingerprint (the
    identity's `outputs`); the write stage renders with the group as it is."""

    resize: Literal[RESIZE_MODES] = setting(
        "fit",
        flag="--resize",
        identity=True,
        help="the working image the model edits: 'fit', the whole picture, aspect ratio kept, longer side = "
        "--resolution, sides multiples of 8 (the VAE's factor; the UNet pads its own levels, so 8 suffices); "
        "'crop', the reference's centre square at --resolution; 'reference', the raw image with each side "
        "floored to a multiple of 8, refused above --max-pixels",
    )
    max_pixels: int = setting(
        1024 * 1024,
        flag="--max-pixels",
        identity=True,
        help="--resize reference: a working image with more pixels is an error row",
    )
    max_output_pixels: int = setting(
        0,
        flag="--max-output-pixels",
        identity=True,
        omit_default=True,
        metavar="N",
        help="--output-size original: a photo with more pixels is an error row, refused before it is decoded, "
        "so one huge photo cannot take a write task's memory (0 = no limit)",
    )
    output_size: Literal[OUTPUT_SIZES] = setting(
        "original",
        flag="--output-size",
        identity=True,
        help="'original': the edit carried to the input's own size and orientation, fine detail kept (with "
        "--resize crop, the centre square at its own size); 'work': the working image as the model made it",
    )
    image_format: Literal[IMAGE_FORMATS] | None = setting(
        None,
        flag="--image-format",
        identity=True,
        shown="the input's: JPEG in, JPEG out",
        help="output file format, members <key>.<ext>",
    )
    quality: int = setting(95, flag="--quality", identity=True, help="JPEG / WebP quality 1-100")
    strip_metadata: bool = setting(
        False,
        flag="--strip-metadata",
        identity=True,
        help="drop EXIF from the outputs; ICC profiles stay, they define the colours (default: EXIF kept, "
        "orientation reset to 1 since the pixels are upright)",
    )
    copy_input: bool = setting(
        False,
        flag="--copy-input",
        identity=True,
        help="also write <key>.input.<ext> (parquet: an input_image column), the input at the output's size and format",
    )
    # other files, same pixels: still another run (one output holds one format)
    output_format: Literal[OUTPUT_FORMATS] = setting(
        "webdataset",
        flag="--output-format",
        identity=True,
        omit_default=True,
        identity_key="format",
        help="'webdataset': per unit a tar of <key>.<ext> + <key>.json and a Parquet ledger; 'parquet': per "
        "unit one Parquet file of every row, the ledger columns plus the image bytes (columns image, "
        "image_format, sample_json), loadable as it is by DuckDB, Spark and HF datasets",
    )

    @property
    def decode_pixel_cap(self) -> int:
        """Photos with more pixels are refused before decoding; 0 = none. Only a full-size output holds the
        photo's pixels in the write task, so only --output-size original is capped."""
        return self.max_output_pixels if self.output_size == "original" else 0

    def __post_init__(self):
        check_choices(self)
        if self.max_pixels < 64:
            raise ValueError(f"--max-pixels must be >= 64 (one 8 x 8 image), got {self.max_pixels}")
        if self.max_output_pixels < 0:
            raise ValueError(f"--max-output-pixels must be >= 0 (0 = no limit), got {self.max_output_pixels}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")


@dataclass(frozen=True)
class SourceImage:
    """The encoded input as the output needs it."""

    upright: Any  # PIL RGB image, EXIF orientation applied (pipeline.stages.as_viewed_rgb); None if not asked
    mode: str  # the input's own PIL mode ("RGB", "CMYK", "L", ...)
    family: str  # jpg | png | webp: the default output format
    icc: bytes | None  # ICC profile, as stored
    exif: bytes  # EXIF with orientation 1 (the pixels are upright now); b"" if the input had none


@dataclass(frozen=True)
class EncodedImage:
    member: str  # tar member name, "<key>.<ext>" or "<key>.input.<ext>"
    data: bytes
    width: int
    height: int
    sha256: str  # of `data`, the bytes written


def open_source(data: bytes, pixels: bool = True) -> SourceImage:
    """`pixels=False`: the metadata only, without decoding the picture (a working-size output needs no more)."""
    from PIL import Image

    from pipeline.viewing import as_viewed_rgb

    with Image.open(io.BytesIO(data)) as img:
        mode, family = img.mode, _FAMILY.get(img.format or "", "png")
        icc = img.info.get("icc_profile") or None
        exif = img.getexif()
        upright = None
        if pixels:
            img.load()
            upright = as_viewed_rgb(img)
    if EXIF_ORIENTATION in exif:
        exif[EXIF_ORIENTATION] = 1  # applied once, here: a viewer must not turn the upright output again
    return SourceImage(upright, mode, family, icc, exif.tobytes() if len(exif) else b"")


def load_libraries() -> None:
    """Imports what rendering a row needs, once per worker process: OpenCV (~0.2 s), `mgie.images` (the
    working-size geometry: PIL and numpy, no torch since the mgie package imports its names on first use)
    and the colour module with its sRGB profile. A task calls it before its rows, so that a row's time is the
    row's own. Kept out of this module's import, which the CLI pays."""
    import cv2

    import mgie.images  # noqa: F401
    from pipeline.colour import srgb_icc

    srgb_icc()

    # one thread: a write task holds a fraction of a core and the stage's parallelism is its many tasks;
    # OpenCV's own pool on top of them only adds threads that wait for each other
    cv2.setNumThreads(1)


def upsample(pixels, size: tuple[int, int], smooth: bool = False):
    """(h, w, C) -> (H, W, C) of the same dtype, bicubic (OpenCV: fixed point for uint8 and int16, a few
    times faster than PIL's resampling at full size). `size` is (W, H). `smooth`: the field is already smooth
    at the working size (the box-filtered gain), so bilinear is as good and a quarter of the taps."""
    import cv2

    return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR if smooth else cv2.INTER_CUBIC)


GAIN_RADIUS = 2  # working-size pixels: the window the local gain is fitted over, (2r+1)^2
GAIN_EPS = (0.02 * 255) ** 2  # variance below which a window counts as flat: its gain tends to 1
# Fixed point of the full-size planes (docs/performance.md "The output path"): levels x 32 in int16 keep
# 1/32-level steps and +-1023 levels of room for the bicubic overshoot, at half float32's memory traffic;
# the gain in uint8 as gain x 127 (0..2 in steps of 1/127: under 0.25 of a level on a 30-level detail).
LEVEL_STEPS = 32
GAIN_STEPS = 127


def box_mean(a, radius: int):
    """(h, w, C) -> the mean over each (2r+1)^2 window, edges clamped, float64 if `a` is, else float32."""
    import cv2
    import numpy as np

    a = a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    k = 2 * radius + 1
    return cv2.boxFilter(a, -1, (k, k), normalize=True, borderType=cv2.BORDER_REPLICATE)  # (h, w, C)


def local_gain(work_input, edited, radius: int = GAIN_RADIUS, eps: float = GAIN_EPS):
    """Per pixel and channel, the slope of edited against input over a small window (the guided filter's
    linear model): 1 where the edit only shifted tones, the contrast factor of a contrast edit, ~0 where
    the model painted new content. Flat windows have no slope to fit; the eps terms pull them to 1 so the
    input's fine texture (grain in a clear sky) is kept there. -> (h, w, 3) float32 in [0, 2]"""
    import numpy as np

    # float32 is exact enough here: x * y <= 255^2 is an exact float32, and the variances' rounding
    # (~0.01) is small against eps (26)
    x, y = work_input.astype(np.float32), edited.astype(np.float32)
    mx, my = box_mean(x, radius), box_mean(y, radius)
    slope = (box_mean(x * y, radius) - mx * my + eps) / (box_mean(x * x, radius) - mx * mx + eps)
    return np.clip(box_mean(slope, radius), 0.0, 2.0)


def transfer_edit(full, work_input, edited):
    """The edit at full size: upsample(edited) + gain * (full - upsample(work_input)), 8 bits.

    full (H, W, 3) uint8 is the input region the working image shows; work_input and edited are (h, w, 3)
    uint8 at the working size. The second term is the input's detail finer than the working size can hold;
    it is added back scaled by the edit's local gain, so a tone edit keeps every grain of the input, a
    contrast edit scales it like the rest of the picture, and painted content does not show the old texture
    through. Downscaled again the detail term vanishes and the result is the model's edit. One resampling
    of the whole picture: no tiles, so no seams. (Measured against plain upsampling, adding the upsampled
    difference, and a guided filter: docs/pipeline.md "Outputs".)

    Three full-size passes besides the three upsamplings, in place, one more full-size plane alive beside
    the detail at a time: at 48 MP the planes peak at about 0.9 GB (computed from their sizes;
    docs/performance.md "The output path")."""
    import cv2
    import numpy as np

    height, width = full.shape[:2]
    size = (width, height)
    gain = np.rint(local_gain(work_input, edited) * GAIN_STEPS).astype(np.uint8)  # (h, w, 3), gain x 127
    # detail, in levels x 32: full x 32 - upsample(work_input x 32)
    detail = upsample(work_input.astype(np.int16) * LEVEL_STEPS, size)  # (H, W, 3) int16
    cv2.addWeighted(full, LEVEL_STEPS, detail, -1.0, 0.0, dst=detail, dtype=cv2.CV_16S)
    cv2.multiply(detail, upsample(gain, size, smooth=True), dst=detail, scale=1.0 / GAIN_STEPS, dtype=cv2.CV_16S)
    up_edit = upsample(edited.astype(np.int16) * LEVEL_STEPS, size)  # (H, W, 3) int16, levels x 32
    # (up_edit + gain * detail) / 32, rounded and clipped to 8 bits in the same pass
    return cv2.addWeighted(up_edit, 1.0 / LEVEL_STEPS, detail, 1.0 / LEVEL_STEPS, 0.0, dtype=cv2.CV_8U)


def _profile_space(icc: bytes | None) -> str | None:
    """The colour space an ICC profile describes (header bytes 16..20): "RGB", "CMYK", "GRAY", ..."""
    return icc[16:20].decode("ascii", "replace").strip() if icc and len(icc) >= 20 else None


def encode_image(pixels, fmt: str, quality: int, source: SourceImage, strip_metadata: bool) -> bytes:
    """(H, W, 3) uint8 RGB -> file bytes. A CMYK JPEG input comes back as a CMYK JPEG with its profile,
    separated through that profile (pipeline.colour); as PNG / WebP, or when the profile cannot separate,
    as sRGB tagged with an sRGB profile. The ICC profile goes along only where it describes the output's
    colour space (a CMYK or grey profile on RGB pixels would be wrong), EXIF unless stripped."""
    from PIL import Image

    from pipeline.colour import managed, srgb_icc, srgb_to_cmyk

    img, icc = Image.fromarray(pixels, "RGB"), source.icc
    if source.mode == "CMYK" and managed(source.icc):  # decoded through the profile: the pixels are sRGB
        cmyk = srgb_to_cmyk(img, source.icc) if fmt == "jpg" else None
        img, icc = (img, srgb_icc()) if cmyk is None else (cmyk, source.icc)
    elif fmt == "jpg" and source.mode == "CMYK":
        img = img.convert("CMYK")  # the inverse of the decode's plain conversion: an unedited pixel's inks return
    params: dict[str, Any] = {}
    if _profile_space(icc) == ("CMYK" if img.mode == "CMYK" else "RGB"):
        params["icc_profile"] = icc
    if source.exif and not strip_metadata:
        params["exif"] = source.exif
    if fmt == "jpg":
        params.update(quality=quality, subsampling=0)  # 4:4:4: no colour bleed on edges a retoucher ships
    elif fmt == "webp":
        params.update(quality=quality)
    buf = io.BytesIO()
    img.save(buf, format=_PIL_FORMAT[fmt], **params)
    return buf.getvalue()


def _encoded(member: str, data: bytes, pixels) -> EncodedImage:
    height, width = pixels.shape[:2]
    return EncodedImage(member, data, width, height, hashlib.sha256(data).hexdigest())


def region_pixels(upright, resize: str):
    """The input region the working image shows, (H, W, 3) uint8; the whole picture without a crop's copy."""
    import numpy as np

    from mgie.images import work_region

    box = work_region(*upright.size, resize)
    return np.asarray(upright if box == (0, 0, *upright.size) else upright.crop(box), dtype=np.uint8)


def render_images(s: dict[str, Any], settings: OutputSettings, with_input: bool) -> list[EncodedImage]:
    """A finished row -> the edited image `<key>.<ext>` (first; absent when the row has no edit) and, with
    `with_input`, the input as the output shows it, `<key>.input.<ext>`, same size and format."""
    source = open_source(s["source"], pixels=settings.output_size == "original")
    fmt = settings.image_format or source.family
    edited, work_input = s.get("edited"), s["pixels"]
    # the detail is added against the VAE's round trip of the input when the edit stage made one: where the
    # edit changes nothing the output is then the photo itself, free of the VAE's blur and colour error
    reference = s.get("reconstruction")
    if settings.output_size == "work":
        if edited is not None and reference is not None:
            edited = transfer_edit(work_input, reference, edited)
        pictures = [("", edited), ("input.", work_input if with_input else None)]
    else:
        full = region_pixels(source.upright, settings.resize)  # (H, W, 3), the input's own pixels
        source = replace(source, upright=None)  # the decoded picture goes: the transfer's planes need the room
        base = work_input if reference is None else reference
        pictures = [
            ("", None if edited is None else transfer_edit(full, base, edited)),
            ("input.", full if with_input else None),
        ]
    return [
        _encoded(f"{s['key']}.{infix}{fmt}", encode_image(p, fmt, settings.quality, source, settings.strip_metadata), p)
        for infix, p in pictures
        if p is not None
    ]
