"""Converters from public image-editing benchmark layouts to our WebDataset input shards.

    report = convert_benchmark("magicbrush", "/data/MagicBrush/test", "s3://bucket/mb-test", split=None)

Each converter reads the layout its authors published (see the module docstrings) and yields samples
with a goal image, so the shards feed `mgie-batch edit` and then `mgie-batch eval` directly.
"""

from __future__ import annotations

from typing import Any

from pipeline.evaluation.benchmarks import evr, gier, ma5k, magicbrush
from pipeline.evaluation.benchmarks.common import Sample, Skipped, safe_key, write_shards

CONVERTERS = {"magicbrush": magicbrush.convert, "evr": evr.convert, "gier": gier.convert, "ma5k": ma5k.convert}


def convert_benchmark(
    name: str,
    root: str,
    output: str,
    split: str | None = None,
    shard_size: int = 1000,
    storage_options: dict | None = None,
    limit: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Converts one benchmark folder (local or fsspec URL) into shards under `output`; returns the report."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(CONVERTERS)}")
    rows = CONVERTERS[name](root, split=split, storage_options=storage_options, **options)
    if limit is not None:
        rows = _take(rows, limit)
    prefix = f"{name}-{split}" if split else name
    return write_shards(
        rows, output, prefix, shard_size, storage_options, info={"benchmark": name, "source": root, "split": split}
    )


def _take(rows, limit: int):
    kept = 0
    for row in rows:
        if kept >= limit:
            return
        kept += isinstance(row, Sample)
        yield row


__all__ = ["CONVERTERS", "Sample", "Skipped", "convert_benchmark", "safe_key", "write_shards"]
