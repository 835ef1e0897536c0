"""Synthetic input images shared by the benchmarks: deterministic, photo-like JPEG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def synthetic_jpegs(count: int, size: tuple[int, int], seed: int, quality: int = 92, noise: float = 8.0) -> list[bytes]:
    """`count` smooth random images (a sine gradient per channel plus Gaussian noise of std `noise`) as
    JPEG bytes of `size` = (width, height); the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        img = np.zeros((h, w, 3), np.float32)  # (H, W, 3)
        for c in range(3):
            a, b, f = rng.uniform(-1, 1, 3)
            img[..., c] = 127 + 60 * np.sin(xx * a * 0.02 + yy * b * 0.02 + f * 6)
            if noise:
                img[..., c] += rng.normal(0, noise, (h, w))
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out
