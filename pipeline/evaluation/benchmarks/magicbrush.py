"""MagicBrush (Zhang et al., NeurIPS 2023 D&B) in either of its published layouts.

Test split (the zip): `edit_sessions.json` = {img_id: [{"input", "mask", "output", "instruction"}, ...]},
images under `images/<img_id>/`, captions in `local_descriptions.json` / `global_descriptions.json` =
{img_id: {file name: caption}}. Turn t's input is the ground-truth output of turn t-1 (the "independent"
single-turn setting MagicBrush's evaluation calls all-turn).

Train/dev splits (the Hugging Face parquet files): columns img_id, turn_index, source_img, mask_img,
instruction, target_img, each image a struct {bytes, path}; files named `<split>-NNNNN-of-NNNNN.parquet`.

One row per edit turn, key `<img_id>_<turn>`; the local description of the goal becomes the row's
`caption` (MagicBrush's CLIP-T text).
"""

from __future__ import annotations

from typing import Iterator

import fsspec

from pipeline.evaluation.benchmarks.common import Sample, Skipped, first_existing, read_json, read_pair, safe_key


def convert(root: str, split: str | None = None, storage_options: dict | None = None) -> Iterator[Sample | Skipped]:
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    sessions = first_existing(
        fs, [f"{base}/edit_sessions.json"] + ([f"{base}/{split}/edit_sessions.json"] if split else [])
    )
    if sessions:
        yield from _sessions(fs, sessions.rsplit("/", 1)[0])
        return
    parquet = sorted(p for p in fs.find(base) if p.endswith(".parquet"))
    if split:
        parquet = [p for p in parquet if p.rsplit("/", 1)[-1].startswith(f"{split}-")]
    if not parquet:
        raise FileNotFoundError(
            f"{root}: neither edit_sessions.json nor MagicBrush parquet files"
            + (f" for split {split!r}" if split else "")
        )
    for path in parquet:
        yield from _parquet(fs, path)


def _sessions(fs, base: str) -> Iterator[Sample | Skipped]:
    sessions = read_json(fs, f"{base}/edit_sessions.json", "MagicBrush edit_sessions.json")
    local = (
        read_json(fs, f"{base}/local_descriptions.json", "captions")
        if fs.exists(f"{base}/local_descriptions.json")
        else {}
    )
    global_ = (
        read_json(fs, f"{base}/global_descriptions.json", "captions")
        if fs.exists(f"{base}/global_descriptions.json")
        else {}
    )
    for img_id in sorted(sessions, key=str):
        turns = sessions[img_id]
        if not isinstance(turns, list):
            yield Skipped(f"edit_sessions[{img_id}]", f"expected a list of turns, got {type(turns).__name__}")
            continue
        for t, turn in enumerate(turns, start=1):
            where = f"edit_sessions[{img_id}][{t - 1}]"
            missing = [f for f in ("input", "output", "instruction") if not turn.get(f)]
            if missing:
                yield Skipped(where, f"missing fields {missing}")
                continue
            pair = read_pair(
                fs, f"{base}/images/{img_id}", turn["input"], turn["output"], where, f"under images/{img_id}/"
            )
            if isinstance(pair, Skipped):
                yield pair
                continue
            image, goal = pair
            meta = {
                "benchmark": "magicbrush",
                "img_id": str(img_id),
                "turn": t,
                "input_file": turn["input"],
                "goal_file": turn["output"],
                "mask_file": turn.get("mask"),
            }
            caption = local.get(str(img_id), {}).get(turn["output"])
            if caption:
                meta["caption"] = caption
            if global_.get(str(img_id), {}).get(turn["output"]):
                meta["global_caption"] = global_[str(img_id)][turn["output"]]
            yield Sample(safe_key(img_id, t), image, turn["instruction"].strip(), goal, meta)


def _parquet(fs, path: str) -> Iterator[Sample | Skipped]:
    import pyarrow.parquet as pq

    name = path.rsplit("/", 1)[-1]
    with fs.open(path, "rb") as f:
        table = pq.ParquetFile(f)
        needed = {"img_id", "turn_index", "source_img", "instruction", "target_img"}
        missing = needed - set(table.schema_arrow.names)
        if missing:
            raise ValueError(f"{name}: not a MagicBrush parquet file, missing columns {sorted(missing)}")
        for batch in table.iter_batches(batch_size=64, columns=sorted(needed)):
            for row in batch.to_pylist():
                where = f"{name} row {row.get('img_id')}/{row.get('turn_index')}"
                src, tgt = row["source_img"] or {}, row["target_img"] or {}
                if not (row.get("instruction") or "").strip():
                    yield Skipped(where, "empty instruction")
                    continue
                if not src.get("bytes") or not tgt.get("bytes"):
                    yield Skipped(where, "source_img or target_img has no bytes")
                    continue
                meta = {
                    "benchmark": "magicbrush",
                    "img_id": str(row["img_id"]),
                    "turn": int(row["turn_index"]),
                    "source_file": name,
                }
                yield Sample(
                    safe_key(row["img_id"], row["turn_index"]),
                    src["bytes"],
                    row["instruction"].strip(),
                    tgt["bytes"],
                    meta,
                )
