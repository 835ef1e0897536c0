"""A picture as a viewer shows it: the one conversion that decode, the writer, the report and eval share."""

from __future__ import annotations


def as_viewed_rgb(img):
    """8-bit RGB as a viewer shows the picture: EXIF orientation applied, 16-bit greyscale scaled (a plain
    convert clips it to white), transparency composited over white (a plain convert shows whatever colour
    the transparent pixels happen to store, often black), CMYK through its embedded ICC profile to sRGB
    (pipeline.colour)."""
    import numpy as np
    from PIL import Image, ImageOps

    icc = img.info.get("icc_profile")  # read before the transpose, which makes a new image
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost an otherwise good picture
        pass
    if img.mode in ("I;16", "I;16L", "I;16B", "I"):
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)  # (H, W)
        img = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if img.mode == "CMYK":
        from pipeline.colour import cmyk_to_srgb

        return cmyk_to_srgb(img, icc)
    return img.convert("RGB")
