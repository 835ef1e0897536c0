"""The decode stage's working image from a JPEG decoded at a reduced scale.

    draft_scale(img, mode, resolution)        asks the JPEG decoder for 1/2, 1/4 or 1/8 of the picture when
                                              the working image needs no more; -> the scale chosen (1: none)
    work_image_at(rgb, scale, mode, resolution)  the working image of the upright picture `rgb` decoded at
                                              1/scale: the same size and region as from the full decode

The decode stage needs only the working image (the write stage decodes the full picture once, for the
output); libjpeg's scaled decode skips most of the inverse DCT and the full-size resampling that follows
it (docs/performance.md "The output path"). A scale is taken only where it divides both sides, so that
full-size pixel x lies at x / scale in the reduced picture whatever the EXIF orientation: no partial edge
block to shift the picture when it is turned upright.
"""

from __future__ import annotations

EXIF_ORIENTATION = 0x0112
# the reduced picture keeps at least twice the working size, as PIL's own thumbnail does (reducing_gap 2):
# the final Lanczos step still has pixels to average, so the working image stays as sharp and unaliased
REDUCING_GAP = 2


def draft_scale(img, mode: str, resolution: int) -> int:
    """Before `img.load()`: configures a JPEG `img` to decode at 1/scale and returns the scale; 1 for every
    other format and where the working image needs the full resolution."""
    from mgie.images import work_region, work_size

    if img.format not in ("JPEG", "MPO"):
        return 1
    stored_w, stored_h = img.size
    try:
        turned = img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # upright, width and height swap
    except Exception:  # a broken EXIF block: decoded in full, as pipeline.viewing copes with it
        return 1
    upright = (stored_h, stored_w) if turned else (stored_w, stored_h)
    try:
        work_w, work_h = work_size(*upright, mode, resolution)
    except ValueError:  # too small for the mode: the decode stage reports it from the full picture
        return 1
    left, top, right, bottom = work_region(*upright, mode)
    room = min((right - left) / work_w, (bottom - top) / work_h) / REDUCING_GAP  # how far it may shrink
    scale = next((s for s in (8, 4, 2) if s <= room and stored_w % s == 0 and stored_h % s == 0), 1)
    if scale > 1:
        img.draft(None, (stored_w // scale, stored_h // scale))
    return scale


def work_image_at(rgb, scale: int, mode: str, resolution: int):
    """The working image (mgie.images.work_image) of the upright picture `rgb`, decoded at 1/scale of its
    full size: the region of the full picture that the working image shows, resampled from the reduced
    pixels (Lanczos, as from the full decode)."""
    from PIL import Image

    from mgie.images import work_image, work_region, work_size

    if scale == 1:
        return work_image(rgb, mode, resolution)
    full_w, full_h = rgb.width * scale, rgb.height * scale
    box = tuple(v / scale for v in work_region(full_w, full_h, mode))  # the region, in reduced pixels
    return rgb.resize(work_size(full_w, full_h, mode, resolution), Image.Resampling.LANCZOS, box=box)
