"""Photo-like test images: scikit-image's bundled photographs upscaled, with procedural fine texture (film
grain and a fine weave) so that the full-size image holds detail the working size cannot, as a real
high-resolution photo does. Also JPEG inputs with EXIF orientation, ICC profiles and CMYK."""

from __future__ import annotations

import functools
import io
import struct

import numpy as np
from PIL import Image

EXIF_ORIENTATION, EXIF_MAKE = 0x0112, 0x010F


def photo(width: int, height: int, seed: int = 0, picture: str = "coffee") -> np.ndarray:
    """(height, width, 3) uint8: a real photograph resized to the size, plus seeded grain and weave."""
    from skimage import data

    base = Image.fromarray(getattr(data, picture)()).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    grain = rng.normal(0.0, 7.0, (height, width, 1))  # (H, W, 1) luminance grain, 1 px scale
    yy, xx = np.mgrid[0:height, 0:width]
    weave = 6.0 * np.sin(xx * 1.9 + 0.3 * yy) * np.sin(yy * 2.3)  # (H, W) fabric-like texture near Nyquist
    out = np.asarray(base, np.float32) + grain + weave[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def srgb_icc() -> bytes:
    """A real sRGB profile, made once (its header holds the creation time)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def cmyk_icc() -> bytes:
    """A CMYK output profile's 128-byte header and an empty tag table: enough to be carried as a profile
    (nothing here colour-manages with it)."""
    header = bytearray(128)
    struct.pack_into(">I", header, 0, 132)  # size: header + tag count
    header[4:8], header[8:12] = b"test", bytes([2, 0x10, 0, 0])  # CMM, version 2.1
    header[12:16], header[16:20], header[20:24] = b"prtr", b"CMYK", b"Lab "
    header[36:40] = b"acsp"
    return bytes(header) + struct.pack(">I", 0)


def jpeg(
    pixels: np.ndarray,
    *,
    orientation: int | None = None,
    icc: bytes | None = None,
    cmyk: bool = False,
    make: str | None = "TestCam",
) -> bytes:
    """JPEG bytes of `pixels` (as stored, before any EXIF rotation), with the metadata asked for."""
    img = Image.fromarray(pixels, "RGB")
    if cmyk:
        img = img.convert("CMYK")
    exif = Image.Exif()
    if make:
        exif[EXIF_MAKE] = make
    if orientation:
        exif[EXIF_ORIENTATION] = orientation
    params = {"quality": 95, "exif": exif.tobytes()}
    if icc:
        params["icc_profile"] = icc
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **params)
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def laplacian_variance(pixels: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma: the usual sharpness figure."""
    y = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W)
    lap = -4 * y[1:-1, 1:-1] + y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:]
    return float(lap.var())
