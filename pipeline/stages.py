"""The stages of the edit plan, each a plain function or callable class over one unit row.

    read      (CPU task)   shard URL -> unit rows of raw samples; committed units pass through as `skip`
                           (pipeline/read_stage.py)
    decode    (CPU task)   image bytes -> RGB at the working resolution; instruction, seed, input JSON
    express   (actor)      MLLM + edit head, then diffusion: see pipeline.model_stages
    edit      (actor)
    write     (CPU task)   images, per-sample JSON and ledger rows into the unit's files, in the run's
                           --output-format; returns a small record the driver turns into the commit
                           (pipeline/write_stage.py)

A bad row becomes an error sample (`rows.fail`) and rides along to the ledger; only a bug stops the job.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline import faults
from pipeline.outputs import OutputSettings
from pipeline.quarantine import UnitGuard, UnitGuardSettings, guarded_unit
from pipeline.read_stage import (  # noqa: F401 (the
    ReadSettings,
    parse_unit,
    read_shard,
    reopened,
    shard_complete,
    shard_done,  # plan's stages are all importable from here)
    unit_base,
    unit_name,
)
from pipeline.rows import fail, pack, require_columns, require_fields, unpack
from pipeline.viewing import as_viewed_rgb  # noqa: F401 (decode's picture, importable from the plan's stages)
from pipeline.write_stage import WriteSettings, write_unit  # noqa: F401 (the plan's last stage)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # first present wins (DESIGN §2)


def row_seed(run_seed: int, key: str) -> int:
    """Per-row seed = f(run seed, key): stable across runs, machines and unit layouts; fits int32."""
    digest = hashlib.sha256(f"{run_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


# ---------------------------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class DecodeSettings:
    """What decode reads: the model's working resolution and the run seed (the run identity's), the shared
    instruction (SamplingSettings), and the output group as it is (--resize, --max-pixels and
    --max-output-pixels decide the working image and which photos are refused before decoding)."""

    resolution: int
    run_seed: int
    instruction: str | None  # shared instruction for every row, or None: each row's own
    outputs: OutputSettings = field(default_factory=OutputSettings)


def decode_unit(
    row: dict[str, Any], settings: DecodeSettings, guard: UnitGuardSettings | None = None, fault_spec: str = ""
) -> dict[str, Any]:
    """Raw samples -> working-resolution RGB pixels, instruction and seed (map). A row that kills or hangs
    the decoder ends as an error row of its own (pipeline/quarantine.py)."""
    require_columns("decode", row, ("payload", "skip"))
    if row["skip"]:
        return row
    faults.configure(fault_spec)
    samples = unpack(row["payload"])
    require_fields("decode", samples, ("key", "fields"))
    with UnitGuard(guard, "decode", guarded_unit(row, guard)) as g:
        for rows in g.batches(samples):
            for s in rows:
                faults.maybe_crash_or_hang("decode", s["key"])
                _decode_sample(s, settings)
    row["payload"] = pack(samples)
    return row


def _decode_sample(s: dict[str, Any], settings: DecodeSettings) -> None:
    import numpy as np
    from PIL import Image

    from mgie.images import work_size
    from pipeline.work_decode import draft_scale, work_image_at

    t0, cpu0 = time.perf_counter(), time.process_time()
    fields: dict[str, bytes] = s["fields"]
    meta: dict[str, Any] = {}
    if "json" in fields:
        try:
            meta = json.loads(fields["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
        except (ValueError, UnicodeDecodeError) as e:
            return fail(s, "validate", f"bad json field: {e}")
    s["meta"] = meta
    # instruction: the job's shared one, else a non-blank txt, else json["instruction"]
    instruction = settings.instruction
    blank: list[str] = []  # fields that were there but empty: the error should say so, not "missing"
    if instruction is None and "txt" in fields:
        try:
            instruction = fields["txt"].decode("utf-8").strip() or None
        except UnicodeDecodeError as e:
            return fail(s, "validate", f"txt field is not UTF-8: {e}")
        if instruction is None:
            blank.append("txt")
    if instruction is None and "instruction" in meta:
        if not isinstance(meta["instruction"], str):
            return fail(s, "validate", f"json 'instruction' must be a string, got {type(meta['instruction']).__name__}")
        instruction = meta["instruction"].strip() or None
        if instruction is None:
            blank.append("json 'instruction'")
    if instruction:
        s["instruction"] = instruction
    elif blank:
        verb = "is" if len(blank) == 1 else "are"
        return fail(s, "validate", f"empty instruction: {' and '.join(blank)} {verb} blank")
    else:
        dotted = [f for f in fields if "." in f]  # "v2.txt": the key had a dot and WebDataset split it there
        hint = (
            " (a member name with more dots than the extension? WebDataset splits a name at its first dot, "
            "so 'photo.v2.txt' is field 'v2.txt' of key 'photo')"
            if dotted
            else ""
        )
        return fail(
            s,
            "validate",
            f"missing instruction: no txt field, no json 'instruction', no --instruction; "
            f"the sample has fields {sorted(fields)}{hint}",
        )
    seed = meta.get("seed")
    if seed is None:
        s["seed"] = row_seed(settings.run_seed, s["key"])
    elif isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63:
        s["seed"] = seed
    else:
        return fail(s, "validate", f"json 'seed' must be an integer in [0, 2**63), got {seed!r}")
    ext = next((e for e in IMAGE_EXTS if e in fields), None)
    if ext is None:
        return fail(s, "decode", f"no image: looked for {', '.join(IMAGE_EXTS)}; the sample has {sorted(fields)}")
    try:
        with Image.open(io.BytesIO(fields[ext])) as img:
            w, h = img.size  # from the header: nothing decoded yet
            cap = settings.outputs.decode_pixel_cap
            if cap and w * h > cap:
                return fail(
                    s,
                    "decode",
                    f"image {w}x{h} is {w * h / 1e6:.1f} MP, over --max-output-pixels {cap} "
                    "for a full-size output; use --output-size work or raise --max-output-pixels",
                )
            scale = draft_scale(img, settings.outputs.resize, settings.resolution)  # a JPEG decodes at 1/scale
            img.load()
            rgb = as_viewed_rgb(img)
        s["input_size"] = (rgb.width * scale, rgb.height * scale)  # upright (w, h): the full-size output's size
        size = work_size(*s["input_size"], settings.outputs.resize, settings.resolution)
        if size[0] * size[1] > settings.outputs.max_pixels:
            return fail(
                s,
                "decode",
                f"image {size[0]}x{size[1]} at --resize {settings.outputs.resize} is "
                f"{size[0] * size[1]} pixels, over --max-pixels {settings.outputs.max_pixels}; use "
                f"--resize fit or raise --max-pixels",
            )
        work = work_image_at(rgb, scale, settings.outputs.resize, settings.resolution)
        s["work_size"] = work.size
    except Exception as e:  # PIL raises many types for bad bytes (UnidentifiedImageError, OSError, SyntaxError...)
        # PIL puts the BytesIO's repr (a memory address) into some messages: keep error text stable
        message = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "image bytes", str(e))
        return fail(s, "decode", f"{type(e).__name__}: {message} (field {ext}, {len(fields[ext])} bytes)")
    s["pixels"] = np.asarray(work, dtype=np.uint8)  # (h, w, 3) at the working size
    s["image_field"] = ext
    s["source"] = fields[ext]  # the encoded input: the write side takes its full size and metadata from it
    goal = next((f"goal.{e}" for e in IMAGE_EXTS if f"goal.{e}" in fields), None)
    if goal is not None:
        s["goal"] = fields[goal]  # raw bytes, decoded by the stages that use it (eval, make-dataset)
    del s["fields"]
    s["ms_decode"] = _ms(t0)
    # CPU time too (the process's: library threads included): under more tasks than cores the wall time of a
    # row grows while its CPU cost does not, and the CPU cost is what sizes a cluster's cores
    s["cpu_ms_decode"] = (time.process_time() - cpu0) * 1000.0
