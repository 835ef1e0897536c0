"""Held-out direction checks the way a user gets the output: photos at their own size through `mgie-batch edit`.

`edit_checks` judges a model at its working size through the library. This judges what a user receives: each
photo keeps its own size and aspect (>= 256 px on the short side), the procedural goal is computed at that
size, and the model's output is the product's default full-size output (the edit carried to the photo's
pixels by pipeline.outputs.transfer_edit). Same per-kind rule as `edit_checks.judge`.

    rows = full_size_rows("heldout", crops=5, seed=1)       # photos never used in training, held-out phrasings
    write_inputs(rows, "in/")                                # in/photos.tar + in/goals.tar
    # mgie-batch edit --model mgie-tiny --input in/photos.tar --output out/
    report = judge_output(rows, "out/")
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

import numpy as np
from PIL import Image

from pipeline.evaluation.edit_checks import PassRule, judge
from pipeline.shards import write_samples
from pipeline.training.photo_sets import PHOTO_SETS, photo
from pipeline.training.procedural import EDITS, EDITS_BY_NAME
from pipeline.writers.webdataset import iter_shard_rows

MIN_SIDE = 256


def full_size_crops(photo_set: str, crops: int, seed: int, min_side: int = MIN_SIDE) -> list[tuple[str, Image.Image]]:
    """`crops` seeded crops of each photo of `photo_set`, at the photo's own pixels (no resampling), each with
    its own aspect ratio between 3:4 and 4:3 and a short side of at least `min_side`."""
    out = []
    for name in PHOTO_SETS[photo_set]:
        img = photo(name)
        rng = random.Random(f"full-size:{seed}:{name}")
        for i in range(crops):
            aspect = rng.uniform(0.75, 1.33)
            short = rng.randint(min_side, max(min_side, min(img.size)))
            w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
            w, h = min(w, img.width), min(h, img.height)
            left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
            out.append((f"{name}-{i:02d}", img.crop((left, top, left + w, top + h))))
    return out


def full_size_rows(
    photo_set: str, crops: int, seed: int, phrasings: str = "held-out", kinds: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """Every kind on every crop: input, the procedural goal at the same size, a seeded phrasing from `phrasings`
    ("held-out" for the held-out check; "validation" for choosing on the training photos; neither is in a training
    row; "train": the kinds' own training phrasings)."""
    rows = []
    for key, img in full_size_crops(photo_set, crops, seed):
        rng = random.Random(f"full-size-rows:{seed}:{key}")
        for edit in EDITS:
            if kinds is not None and edit.name not in kinds:
                continue
            strength = round(rng.uniform(*edit.strength), 4)
            said = edit.said(phrasings)
            rows.append(
                {
                    "key": f"{key}-{edit.name}",
                    "kind": edit.name,
                    "instruction": rng.choice(said),
                    "strength": strength,
                    "input": img,
                    "goal": edit.apply(img, strength),
                }
            )
    return rows


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_inputs(rows: list[dict[str, Any]], folder: str) -> str:
    """`folder`/photos.tar (the edit job's input: png + txt per row) and `folder`/goals.tar. -> the input path"""
    os.makedirs(folder, exist_ok=True)
    photos = [(r["key"], {"png": _png(r["input"]), "txt": r["instruction"].encode()}) for r in rows]
    goals = [(r["key"], {"png": _png(r["goal"])}) for r in rows]
    path = os.path.join(folder, "photos.tar")
    with open(path, "wb") as f:
        f.write(write_samples(photos))
    with open(os.path.join(folder, "goals.tar"), "wb") as f:
        f.write(write_samples(goals))
    return path


def read_output(output: str) -> dict[str, dict[str, Any]]:
    """key -> {"image": PIL, "expressive": str} of every committed ok row of a webdataset-format output."""
    found: dict[str, dict[str, Any]] = {}
    for r in iter_shard_rows(output):
        found[r.key.rsplit("/", 1)[-1]] = {
            "image": Image.open(io.BytesIO(r.images["image"])).convert("RGB"),
            "expressive": r.meta.get("expressive_instruction") or "",
        }
    return found


def judge_output(rows: list[dict[str, Any]], output: str, rule: PassRule | None = None) -> dict[str, Any]:
    """Each kind judged on the output's full-size images against the full-size goals. A row the output lacks
    (an error row) counts as not moved, with the input as its image, so failures cannot hide."""
    rule = rule or PassRule()
    edited = read_output(output)
    by_kind: dict[str, dict[str, list]] = {}
    for r in rows:
        got = edited.get(r["key"])
        out = got["image"] if got is not None else r["input"]
        if out.size != r["input"].size:
            raise ValueError(
                f"row {r['key']}: the output is {out.size}, the photo {r['input'].size}: not the "
                f"photo's own size (was --output-size original used?)"
            )
        slot = by_kind.setdefault(r["kind"], {"inputs": [], "outputs": [], "goals": [], "texts": []})
        slot["inputs"].append(np.asarray(r["input"], np.float32) / 255.0)
        slot["outputs"].append(np.asarray(out, np.float32) / 255.0)
        slot["goals"].append(np.asarray(r["goal"], np.float32) / 255.0)
        slot["texts"].append(got["expressive"] if got is not None else "")
    from dataclasses import asdict

    kinds = {
        k: asdict(judge(k, v["inputs"], v["outputs"], v["goals"], v["texts"], rule)) for k, v in sorted(by_kind.items())
    }
    sizes = sorted({r["input"].size for r in rows})
    return {
        "rule": asdict(rule),
        "rows": len(rows),
        "missing_rows": sum(r["key"] not in edited for r in rows),
        "sizes": {
            "smallest": list(min(sizes, key=lambda s: s[0] * s[1])),
            "largest": list(max(sizes, key=lambda s: s[0] * s[1])),
        },
        "kinds": kinds,
        "passed": sorted(k for k, v in kinds.items() if v["passed"]),
    }


TONE_AND_COLOUR = (
    "brighten",
    "darken",
    "contrast",
    "saturate",
    "grayscale",
    "sepia",
    "warmer",
    "cooler",
    "invert",
    "vignette",
)
assert set(TONE_AND_COLOUR) <= set(EDITS_BY_NAME)
