"""Named sets of photos that ship inside scikit-image, for training and evaluating small models.

`builtin:train` and `builtin:heldout` share no photograph: a model trained on the first is judged on the second
(mgie-tiny, docs/training.md). Each photo gives several seeded square crops at several scales, so a few dozen
photographs make a few hundred distinct training images.
"""

from __future__ import annotations

import io
import random
from typing import Iterator

from pipeline.dev.demo_data import photo

__all__ = ["PHOTO_SETS", "PREFIX", "is_photo_set", "iter_photo_set", "photo"]

PHOTO_SETS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut",
        "coffee",
        "hubble_deep_field",
        "retina",
        "motorcycle_left",
        "immunohistochemistry",
        "camera",
        "moon",
        "coins",
        "grass",
        "gravel",
        "brick",
        "page",
    ),
    "heldout": ("chelsea", "rocket"),
}
PREFIX = "builtin:"


def is_photo_set(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def iter_photo_set(spec: str, crops: int = 24, size: int = 128, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`builtin:<set>[:<crops>]` -> (name, PNG bytes) of `crops` seeded square crops per photo, `size` px."""
    from PIL import Image

    parts = spec[len(PREFIX) :].split(":")
    name = parts[0]
    if name not in PHOTO_SETS:
        raise ValueError(f"--input {spec!r}: unknown photo set; known: " + ", ".join(PREFIX + n for n in PHOTO_SETS))
    if len(parts) > 1:
        crops = int(parts[1])
    for photo_name in PHOTO_SETS[name]:
        img = photo(photo_name)
        rng = random.Random(f"{seed}:{photo_name}")
        for i in range(crops):
            # the first crop is the whole centre square; the others zoom in at seeded places
            side = min(img.size) if i == 0 else int(min(img.size) * rng.uniform(0.35, 0.9))
            left = (img.width - side) // 2 if i == 0 else rng.randint(0, img.width - side)
            top = (img.height - side) // 2 if i == 0 else rng.randint(0, img.height - side)
            crop = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
            if i and rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            buf = io.BytesIO()
            crop.save(buf, format="PNG")
            yield f"{photo_name}-{i:03d}", buf.getvalue()
