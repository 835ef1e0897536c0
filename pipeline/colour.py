"""Colour management of CMYK inputs: their embedded ICC profile to sRGB and back (LittleCMS via PIL.ImageCms).

The model edits sRGB pixels. A CMYK JPEG holds ink amounts, and its embedded profile says what colour they
print as; PIL's plain `convert("RGB")` ignores the profile (R = 255 - C - K, roughly), which turns a print
file's cyan into a screen's pure (0, 255, 255) and its rich black into flat black. Here:

    cmyk_to_srgb(img, icc)     CMYK -> sRGB through the profile; without one, or with one LittleCMS cannot
                               read, PIL's plain conversion (the documented default: there is no
                               "right" colour for ink amounts without their press's profile)
    srgb_to_cmyk(img, icc)     sRGB -> CMYK through the same profile, for a CMYK output that keeps it; None
                               when the profile cannot separate (an input-only profile without a B2A table)
    managed(icc)               whether `icc` is a CMYK profile LittleCMS can convert from
    SRGB_ICC                   the sRGB profile that tags RGB outputs made through a CMYK profile

Rendering intent: relative colorimetric with black-point compensation, both ways, as Adobe's default
colour settings convert. Relative colorimetric is the intent the profile defines by measurement: colours
inside sRGB (nearly all of a press's gamut) come out at their measured value, and paper white becomes sRGB
white (the page looks like a page, not a grey-tinted print of one). Perceptual tables are each profile
maker's own gamut compression, so a picture's colours would depend on who made the profile. Black-point
compensation maps the press's darkest black (a CMYK black is L* 10-20, not 0) to sRGB black, so shadows
keep their depth instead of coming out lifted and grey; on the way back it maps sRGB black to the press's
black, so an unedited pixel returns close to its own inks.
"""

from __future__ import annotations

import functools
import io


def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.createProfile("sRGB")


@functools.lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """LittleCMS's sRGB profile as bytes (made once per process)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(_srgb_profile()).tobytes()


@functools.lru_cache(maxsize=16)
def _transform(icc: bytes, to_srgb: bool):
    """The LittleCMS transform between a CMYK profile and sRGB, built once per profile (a few ms each; a
    catalogue's images usually share one profile); None when LittleCMS refuses the profile or direction."""
    from PIL import ImageCms

    if not icc or icc[16:20] != b"CMYK":
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        ends = (profile, _srgb_profile(), "CMYK", "RGB") if to_srgb else (_srgb_profile(), profile, "RGB", "CMYK")
        return ImageCms.buildTransform(
            *ends, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, flags=ImageCms.Flags.BLACKPOINTCOMPENSATION
        )
    except (ImageCms.PyCMSError, OSError, ValueError):  # not a profile LittleCMS can use: the plain path
        return None


def managed(icc: bytes | None) -> bool:
    """Whether CMYK pixels with this profile are converted through it (else by PIL's plain formula)."""
    return _transform(icc or b"", True) is not None


def cmyk_to_srgb(img, icc: bytes | None):
    """A CMYK PIL image -> RGB: through `icc` when LittleCMS can use it, else PIL's plain conversion."""
    from PIL import ImageCms

    transform = _transform(icc or b"", True)
    return img.convert("RGB") if transform is None else ImageCms.applyTransform(img, transform)


def srgb_to_cmyk(img, icc: bytes | None):
    """An sRGB PIL image -> CMYK through `icc`; None when the profile cannot separate (no B2A table)."""
    from PIL import ImageCms

    transform = _transform(icc or b"", False)
    return None if transform is None else ImageCms.applyTransform(img, transform)
