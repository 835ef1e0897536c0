"""Demo input shards made from the photographs that ship inside scikit-image (no download needed).

Each row pairs a photo with an instruction of the kind the three use cases send (photo optimisation,
catalogue retouching, creative edits); one row per demo carries a corrupt image on purpose, to show that a
bad row becomes an error row in the ledger while the job goes on.
"""

from __future__ import annotations

import io
import json
from typing import Iterator

# bundled with scikit-image's wheel (skimage/data/*); grey ones are turned to RGB
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "hubble_deep_field",
    "retina",
    "motorcycle_left",
    "moon",
    "coins",
    "grass",
    "gravel",
    "brick",
    "page",
    "immunohistochemistry",
)

# what bulk photo optimisation and catalogue retouching send, in words the shipped mgie-tiny never saw in
# training (its held-out phrasings and a few more): the demo shows it interpreting them
INSTRUCTIONS = (
    "make the photo lighter",
    "turn up the contrast please",
    "give it warmer tones please",
    "turn it black and white please",
    "make it look like a sepia photograph",
    "give it cooler tones please",
    "make the colours more intense",
    "turn down the brightness",
    "show it as a negative please",
    "give the picture dark corners please",
    "it needs to be brighter please",
    "make the light feel colder",
)


def photo(name: str):
    """A photo that ships inside scikit-image, as RGB."""
    import numpy as np
    import skimage.data
    from PIL import Image

    if name == "motorcycle_left":
        arr = skimage.data.stereo_motorcycle()[0]
    else:
        arr = getattr(skimage.data, name)()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:  # some samples are float or uint16
        arr = (255 * (arr - arr.min()) / max(1e-9, float(arr.max() - arr.min()))).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3], "RGB")


def demo_samples(
    n_rows: int, size: int = 128, bad_rows: tuple[int, ...] = (5,)
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, fields) rows: JPEG photo (longest side `size`), instruction in txt or json, a few with seeds."""
    for i in range(n_rows):
        name = PHOTOS[i % len(PHOTOS)]
        img = photo(name)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        instruction = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        key = f"{i:05d}-{name}"
        if i in bad_rows:
            yield key, {"jpg": buf.getvalue()[:200], "txt": instruction.encode()}  # truncated JPEG
        elif i % 3 == 1:  # instruction in the JSON, with metadata that is carried through to the output
            yield (
                key,
                {
                    "jpg": buf.getvalue(),
                    "json": json.dumps({"instruction": instruction, "photo": name, "sku": f"demo-{i:04d}"}).encode(),
                },
            )
        else:
            yield key, {"jpg": buf.getvalue(), "txt": instruction.encode()}


def write_demo_shards(
    prefix: str, n_shards: int = 2, rows_per_shard: int = 8, storage_options: dict | None = None, size: int = 128
) -> list[str]:
    """Writes `prefix/demo-000.tar ...`; returns their URLs."""
    import fsspec

    from pipeline.shards import write_samples

    rows = list(demo_samples(n_shards * rows_per_shard, size))
    urls = []
    for s in range(n_shards):
        url = f"{prefix.rstrip('/')}/demo-{s:03d}.tar"
        with fsspec.open(url, "wb", **(storage_options or {})) as f:
            f.write(write_samples(rows[s * rows_per_shard : (s + 1) * rows_per_shard]))
        urls.append(url)
    return urls
