"""Training data: triplet shards -> a Ray Dataset of raw rows -> each worker's batches in a replayable order.

Ray Data reads the shards (listing, fetching, tar parsing) and streams raw rows (bytes + text) to the
trainer. The order is a function of (seed, epoch) only, so a resumed run sees exactly the batches the
interrupted one would have: Ray Data keeps the shard order (`preserve_order`), a seeded shuffle buffer
permutes rows within a window per epoch, and every worker reads the same stream and takes its own slice
of each global batch (global batch g, worker r: rows [g*W*B + r*B, g*W*B + (r+1)*B)). Decoding happens in
the worker, for its own rows only. Reading the whole stream on every worker costs W times the listing and
fetching (cheap next to a training step at real sizes); `streaming_split` would split the reading, but
its row-to-worker assignment is dynamic, so a resume could not replay the same batches.

Accepted inputs: a `make-dataset` output prefix (committed units only), a `make-dataset --procedural`
output (its manifest), or shard patterns as `edit --input` takes them.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from PIL import Image

from pipeline.inputs import SHARDS, resolve_sources
from pipeline.layout import OutputLayout, ProceduralLayout
from pipeline.location import FROM_ENVIRONMENT, Reach
from pipeline.shards import iter_samples
from pipeline.storage import Store

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def training_shards(spec: str, reach: Reach = FROM_ENVIRONMENT) -> list[str]:
    """Shard URLs of a training input, in a fixed order."""
    if len(spec.split()) == 1 and "{" not in spec and not any(c in spec for c in "*?["):
        store = Store.open(reach.at(spec))
        if store.exists(ProceduralLayout.MANIFEST):  # make-dataset --procedural
            manifest = json.loads(store.read_bytes(ProceduralLayout.MANIFEST))
            return [_join(spec, rel) for rel in manifest["shards"]]
        if store.exists(OutputLayout.COMMITS):  # make-dataset: committed units only, never a half-written orphan
            from pipeline.ledger import load_state

            state = load_state(store)
            formats = {r.get("output_format") or "webdataset" for r in state.commits.values()}
            if formats - {"webdataset"}:
                raise ValueError(
                    f"--input {spec}: a make-dataset output written with --output-format "
                    f"{', '.join(sorted(formats - {'webdataset'}))}; training reads WebDataset "
                    f"triplets: run make-dataset with --output-format webdataset into a new --output"
                )
            rels = sorted(r["files"]["shard"] for r in state.commits.values() if r["files"]["shard"])
            if not rels:
                raise FileNotFoundError(f"--input {spec}: the make-dataset output has no committed shard yet")
            return [_join(spec, rel) for rel in rels]
    return resolve_sources(spec.split(), reach, SHARDS)


def _join(prefix: str, rel: str) -> str:
    store = Store.open(prefix)
    return f"{store.url}/{rel}"


def triplet_rows(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One shard -> its usable training rows (flat_map). A row needs an input image, a goal image, an
    instruction and an expressive instruction; others are skipped (an eval-only or text-only row)."""
    with item.get("reach", FROM_ENVIRONMENT).at(item["shard"]).open() as f:
        for key, fields in iter_samples(f):
            meta = {}
            if "json" in fields:
                try:
                    meta = json.loads(fields["json"].decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
            source = fields.get("input.png") or next((fields[e] for e in IMAGE_EXTS if e in fields), None)
            goal = next((fields[f"goal.{e}"] for e in IMAGE_EXTS if f"goal.{e}" in fields), None)
            instruction = fields["txt"].decode("utf-8", "replace").strip() if "txt" in fields else ""
            instruction = instruction or str(meta.get("instruction") or "").strip()
            expressive = str(meta.get("summary") or meta.get("expressive_instruction") or "").strip()
            if source is None or goal is None or not instruction or not expressive:
                continue
            yield {"key": key, "input": source, "goal": goal, "instruction": instruction, "expressive": expressive}


def build_dataset(shards: list[str], reach: Reach = FROM_ENVIRONMENT, read_cpus: float = 0.25):
    """A Ray Dataset of raw training rows, in shard order (rows are bytes: decoding is the worker's)."""
    import ray.data

    ds = ray.data.from_items([{"shard": s, "reach": reach} for s in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.flat_map(triplet_rows, num_cpus=read_cpus)
    ds.context.execution_options.preserve_order = True  # the replayable order starts with the shard order
    return ds


def shuffled(rows: Iterable[dict], buffer: int, seed: int) -> Iterator[dict]:
    """A seeded shuffle-buffer permutation of a stream (buffer <= 1: the stream as it is)."""
    if buffer <= 1:
        yield from rows
        return
    rng = random.Random(seed)
    pool: list[dict] = []
    for row in rows:
        pool.append(row)
        if len(pool) >= buffer:
            yield pool.pop(rng.randrange(len(pool)))
    while pool:
        yield pool.pop(rng.randrange(len(pool)))


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    rank: int
    batch_size: int  # per worker
    shuffle_buffer: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def epoch_batches(self, rows: Iterable[dict], epoch: int, skip_batches: int = 0) -> Iterator[list[dict]]:
        """This worker's batches of one epoch, after `skip_batches` global batches (a resume). The last,
        incomplete global batch is dropped so every worker takes the same number of steps."""
        group: list[dict] = []
        index = 0
        for row in shuffled(rows, self.shuffle_buffer, self.seed * 1_000_003 + epoch):
            group.append(row)
            if len(group) < self.global_batch:
                continue
            if index >= skip_batches:
                yield group[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            index += 1
            group = []


def decode_image(data: bytes, resolution: int) -> Image.Image:
    """Encoded image -> RGB, centre-cropped square, bicubic to `resolution` (the reference's training crop)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img if side == resolution else img.resize((resolution, resolution), Image.Resampling.BICUBIC)


def decode_batch(rows: list[dict], resolution: int) -> dict[str, list]:
    return {
        "inputs": [decode_image(r["input"], resolution) for r in rows],
        "goals": [decode_image(r["goal"], resolution) for r in rows],
        "instructions": [r["instruction"] for r in rows],
        "expressive": [r["expressive"] for r in rows],
        "keys": [r["key"] for r in rows],
    }
