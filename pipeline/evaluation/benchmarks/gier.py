"""GIER, "A Benchmark and Baseline for Language-Driven Image Editing" (Shi et al., ACCV 2020), as its
authors' release lays it out: `GIER.json` (released earlier as `IER2.json`) or a split file
`splits/<split>_sess_<n>.json`, each a list of pairs {"input", "output", "request", "detailed_request",
"operator", "expert_summary", "amateur_summary", ...}; images in `images/` with "/" in a name replaced
by "_". The editing requests are the expert and amateur summaries (the raw web request when both are
empty).

One row per request, key `<input stem>_<n>`; the operators of the pair go into the row's json.
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


def convert(root: str, split: str | None = None, storage_options: dict | None = None) -> Iterator[Sample | Skipped]:
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    if split:
        found = sorted(fs.glob(f"{base}/splits/{split}_sess_*.json"))
        index = found[0] if found else None
    else:
        index = first_existing(fs, [f"{base}/GIER.json", f"{base}/IER2.json"])
    if index is None:
        raise FileNotFoundError(f"{root}: no " + (f"splits/{split}_sess_*.json" if split else "GIER.json or IER2.json"))
    rows = read_json(fs, index, "GIER annotations")
    name = index.rsplit("/", 1)[-1]
    for n, row in enumerate(rows):
        where = f"{name}[{n}]"
        if not isinstance(row, dict) or not row.get("input") or not row.get("output"):
            yield Skipped(where, "missing input / output")
            continue
        requests = list(iter_nonempty((row.get("expert_summary") or []) + (row.get("amateur_summary") or [])))
        if not requests and (row.get("request") or "").strip():
            requests = [(0, row["request"].strip())]
        if not requests:
            yield Skipped(where, "no request (expert_summary, amateur_summary and request are empty)")
            continue
        in_file, out_file = row["input"].replace("/", "_"), row["output"].replace("/", "_")
        pair = read_pair(fs, f"{base}/images", in_file, out_file, where, "in images/")
        if isinstance(pair, Skipped):
            yield pair
            continue
        image, goal = pair
        stem = in_file.rsplit(".", 1)[0]
        operators = sorted((row.get("operator") or {}).keys())
        for i, (_, text) in enumerate(requests):
            meta = {
                "benchmark": "gier",
                "input_file": in_file,
                "goal_file": out_file,
                "request_index": i,
                "operators": operators,
                "source": row.get("dataset"),
            }
            yield Sample(safe_key(stem, i), image, text, goal, meta)
