"""MA5k-Req, the MIT-Adobe FiveK pairs with language requests of "Learning by Planning: Language-Guided
Global Image Editing" (Shi et al., CVPR 2021), as its authors' release lays it out: `FiveK.json` or a
split file (`annotations/<split>_sess_<n>.json`, `splits/<split>_sess_<n>.json`), each a list of
{"input", "output", "request"}; images in `images/` (e.g. 0001O.jpg -> 0001A.jpg).

One row per request, key `<input stem>_<n>` (n counts the requests of the same input).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import fsspec

from pipeline.evaluation.benchmarks.common import Sample, Skipped, read_json, read_pair, safe_key


def convert(root: str, split: str | None = None, storage_options: dict | None = None) -> Iterator[Sample | Skipped]:
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    if split:
        found = sorted(
            fs.glob(f"{base}/annotations/{split}_sess_*.json") + fs.glob(f"{base}/splits/{split}_sess_*.json")
        )
        if not found:
            raise FileNotFoundError(f"{root}: no annotations/{split}_sess_*.json or splits/{split}_sess_*.json")
        index = found[0]
    else:
        index = f"{base}/FiveK.json"
    rows = read_json(fs, index, "MA5k annotations")
    name = index.rsplit("/", 1)[-1]
    counts: dict[str, int] = defaultdict(int)
    for n, row in enumerate(rows):
        where = f"{name}[{n}]"
        if not isinstance(row, dict) or not row.get("input") or not row.get("output"):
            yield Skipped(where, "missing input / output")
            continue
        text = (row.get("request") or "").strip()
        if not text:
            yield Skipped(where, "empty request")
            continue
        pair = read_pair(fs, f"{base}/images", row["input"], row["output"], where, "in images/")
        if isinstance(pair, Skipped):
            yield pair
            continue
        image, goal = pair
        stem = row["input"].rsplit(".", 1)[0]
        i = counts[stem]
        counts[stem] += 1
        meta = {"benchmark": "ma5k", "input_file": row["input"], "goal_file": row["output"], "request_index": i}
        yield Sample(safe_key(stem, i), image, text, goal, meta)
