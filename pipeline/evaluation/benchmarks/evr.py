"""EVR, the image-editing request corpus of "Expressing Visual Relationships via Language" (Tan et al.,
ACL 2019): `<split>.json` (train / valid / test) is a list of {"img0", "img1", "sents", "uid"}; img0 is the
image before editing, img1 after; `sents` holds one request (train) or three (valid / test). The images
are one folder of files named as in img0 / img1.

One row per request, key `<uid>_<n>`; `--evr-first-only` keeps the first request of each pair.
"""

from __future__ import annotations

from typing import Iterator

import fsspec

from pipeline.evaluation.benchmarks.common import (
    Sample,
    Skipped,
    first_existing,
    iter_nonempty,
    read_json,
    read_pair,
    safe_key,
)


def convert(
    root: str,
    split: str | None = None,
    storage_options: dict | None = None,
    images: str | None = None,
    first_only: bool = False,
) -> Iterator[Sample | Skipped]:
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    split = split or "test"
    index = first_existing(fs, [f"{base}/{split}.json", f"{base}/data/{split}.json"])
    if index is None:
        raise FileNotFoundError(f"{root}: no {split}.json (looked in the folder and in data/)")
    image_dir = images.rstrip("/") if images else first_existing(fs, [f"{base}/images", f"{base}/imgs"]) or base
    rows = read_json(fs, index, f"EVR {split}.json")
    if not isinstance(rows, list):
        raise ValueError(f"{index}: expected a list of pairs, got {type(rows).__name__}")
    for n, row in enumerate(rows):
        where = f"{split}.json[{n}]"
        if not isinstance(row, dict) or not row.get("img0") or not row.get("img1"):
            yield Skipped(where, "missing img0 / img1")
            continue
        sents = list(iter_nonempty(row.get("sents") or []))
        if not sents:
            yield Skipped(where, "no non-empty request in sents")
            continue
        pair = read_pair(fs, image_dir, row["img0"], row["img1"], where, f"in {image_dir}")
        if isinstance(pair, Skipped):
            yield pair
            continue
        image, goal = pair
        uid = row.get("uid") or f"{split}{n}"
        for i, sent in sents[:1] if first_only else sents:
            meta = {
                "benchmark": "evr",
                "uid": uid,
                "request_index": i,
                "input_file": row["img0"],
                "goal_file": row["img1"],
            }
            yield Sample(safe_key(uid, i), image, sent, goal, meta)
