"""The detail transfer as it was first written (numpy float32 passes, PIL's float resampling, a float64
summed-area box mean): the reference that `pipeline.outputs.transfer_edit` is held to in
tests/test_transfer_speed.py and bench/full_res.py. Not used by the product.

It is a few times slower than the product's (docs/performance.md "The output path") and, at 48 MP,
needs about 4 GB for its float32 planes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.outputs import GAIN_EPS, GAIN_RADIUS


def upsample_float(channels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) float32 -> (H, W, C) float32, bicubic per channel (PIL's float mode: no clipping to 8 bits)."""
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c]), "F").resize(size, Image.Resampling.BICUBIC))
        for c in range(channels.shape[-1])
    ]
    return np.stack(planes, axis=-1)  # (H, W, C)


def box_mean_table(a: np.ndarray, radius: int) -> np.ndarray:
    """(h, w, C) -> the mean over each (2r+1)^2 window, edges clamped (summed-area table), float64."""
    k = 2 * radius + 1
    table = (
        np.pad(a.astype(np.float64), ((radius + 1, radius), (radius + 1, radius), (0, 0)), mode="edge")
        .cumsum(0)
        .cumsum(1)
    )  # (h + k, w + k, C)
    return (table[k:, k:] - table[:-k, k:] - table[k:, :-k] + table[:-k, :-k]) / (k * k)  # (h, w, C)


def local_gain_reference(
    work_input: np.ndarray, edited: np.ndarray, radius: int = GAIN_RADIUS, eps: float = GAIN_EPS
) -> np.ndarray:
    x, y = work_input.astype(np.float64), edited.astype(np.float64)
    mx, my = box_mean_table(x, radius), box_mean_table(y, radius)
    slope = (box_mean_table(x * y, radius) - mx * my + eps) / (box_mean_table(x * x, radius) - mx * mx + eps)
    return np.clip(box_mean_table(slope, radius), 0.0, 2.0).astype(np.float32)  # (h, w, 3)


def transfer_edit_reference(full: np.ndarray, work_input: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """upsample(edited) + gain * (full - upsample(work_input)) in float32, rounded once at the end."""
    height, width = full.shape[:2]
    detail = full.astype(np.float32) - upsample_float(work_input.astype(np.float32), (width, height))  # (H, W, 3)
    gain = upsample_float(local_gain_reference(work_input, edited), (width, height))  # (H, W, 3)
    out = upsample_float(edited.astype(np.float32), (width, height)) + gain * detail
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
