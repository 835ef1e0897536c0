"""What every benchmark converter shares: the sample it yields and the WebDataset shard writer.

A converted sample follows the input contract of docs/architecture.md: `<key>.<ext>` input image,
`<key>.txt` instruction, `<key>.json` (instruction, benchmark, caption when the benchmark has one, where
the files came from), `<key>.goal.<ext>` goal image. Image bytes are copied as they are when the format
is one we read (jpg, png, webp); anything else (gif, bmp, tiff) is re-encoded as PNG.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import fsspec
from PIL import Image

from pipeline.shards import write_samples

PASS_THROUGH = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
KEY_RE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(*parts: Any) -> str:
    """A WebDataset key: no dots (the key ends at the first dot) and no path separators."""
    return KEY_RE.sub("_", "_".join(str(p) for p in parts)).strip("_")


@dataclass
class Sample:
    key: str
    image: bytes
    instruction: str
    goal: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """A benchmark row that could not be converted (missing file, unreadable image, no instruction)."""

    where: str
    reason: str


def image_payload(data: bytes, what: str) -> tuple[str, bytes]:
    """(extension, bytes) for an image file's content; raises ValueError naming `what` if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if fmt in PASS_THROUGH:
                img.verify()  # catches truncated files without decoding everything
                return PASS_THROUGH[fmt], data
            out = io.BytesIO()
            img.convert("RGB").save(out, format="PNG")  # first frame of an animation
            return "png", out.getvalue()
    except Exception as exc:  # PIL raises many types for bad files
        raise ValueError(f"{what}: not a readable image ({type(exc).__name__}: {exc})") from None


def sample_files(sample: Sample) -> dict[str, bytes]:
    ext, image = image_payload(sample.image, f"{sample.key} input image")
    files = {ext: image, "txt": sample.instruction.encode()}
    meta = {"instruction": sample.instruction, **sample.meta}
    if sample.goal is not None:
        gext, goal = image_payload(sample.goal, f"{sample.key} goal image")
        files[f"goal.{gext}"] = goal
    files["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
    return files


def write_shards(
    samples: Iterable[Sample | Skipped],
    output: str,
    prefix: str,
    shard_size: int = 1000,
    storage_options: dict | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes `OUTPUT/<prefix>-000000.tar`, ... and `OUTPUT/conversion.json`; returns that report.

    Rows that cannot be converted are counted and listed in the report, never a crash. Keys must be
    unique: a repeated key is skipped with its reason.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    shards: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    current: list[tuple[str, dict[str, bytes]]] = []

    def flush() -> None:
        if not current:
            return
        name = f"{prefix}-{len(shards):06d}.tar"
        fs.pipe_file(f"{root}/{name}", write_samples(current))  # fixed metadata: same input, same shard bytes
        shards.append({"name": name, "rows": len(current)})
        current.clear()

    for item in samples:
        if isinstance(item, Skipped):
            skipped.append({"where": item.where, "reason": item.reason})
            continue
        if item.key in seen:
            skipped.append({"where": item.key, "reason": "duplicate key"})
            continue
        try:
            files = sample_files(item)
        except ValueError as exc:
            skipped.append({"where": item.key, "reason": str(exc)})
            continue
        seen.add(item.key)
        current.append((item.key, files))
        if len(current) >= shard_size:
            flush()
    flush()
    report = {
        **(info or {}),
        "prefix": prefix,
        "rows": sum(s["rows"] for s in shards),
        "shards": shards,
        "skipped": len(skipped),
        "skipped_rows": skipped,
    }
    fs.pipe_file(f"{root}/conversion.json", json.dumps(report, indent=2).encode())
    return report


def read_json(fs: fsspec.AbstractFileSystem, path: str, what: str) -> Any:
    if not fs.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(fs.cat_file(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} ({path}) is not valid JSON: {exc}") from None


def read_file(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    return fs.cat_file(path) if fs.exists(path) else None


def read_pair(
    fs: fsspec.AbstractFileSystem, folder: str, input_file: str, goal_file: str, where: str, place: str
) -> tuple[bytes, bytes] | Skipped:
    """(input bytes, goal bytes) of `folder/input_file` and `folder/goal_file`, or the Skipped row that
    names the missing files (`place` says where they were looked for, e.g. "in images/")."""
    image, goal = read_file(fs, f"{folder}/{input_file}"), read_file(fs, f"{folder}/{goal_file}")
    if image is None or goal is None:
        absent = [f for f, d in ((input_file, image), (goal_file, goal)) if d is None]
        return Skipped(where, f"image files not found {place}: {absent}")
    return image, goal


def first_existing(fs: fsspec.AbstractFileSystem, candidates: Iterable[str]) -> str | None:
    return next((c for c in candidates if fs.exists(c)), None)


def iter_nonempty(texts: Iterable[Any]) -> Iterator[tuple[int, str]]:
    for i, t in enumerate(texts):
        if isinstance(t, str) and t.strip():
            yield i, t.strip()
