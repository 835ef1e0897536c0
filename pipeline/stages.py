"""The stages of the edit plan, each a plain function or callable class over one unit row.

    read      (CPU task)   shard URL -> unit rows of raw samples; committed units pass through as `skip`
                           (pipeline/read_stage.py)
    decode    (CPU task)   image bytes -> RGB at the working resolution; instruction, seed, input JSON
    express   (actor)      MLLM + edit head, then diffusion: see pipeline.model_stages
    edit      (actor)
    write     (CPU task)   PNG + JSON into shards/<unit>.tar, rows into ledger/<unit>.parquet; returns a
                           small record the driver turns into the commit

A bad row becomes an error sample (`rows.fail`) and rides along to the ledger; only a bug stops the job.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from . import faults
from .read_stage import (ReadSettings, parse_unit, read_shard, reopened, shard_complete,  # noqa: F401 (the
                         shard_done, unit_base, unit_name)  # plan's stages are all importable from here)
from .outputs import OutputSettings, render_images
from .quality import QA_COLUMNS
from .viewing import as_viewed_rgb  # noqa: F401 (decode's picture, importable from the plan's stages)
from .rows import (ERROR, KEEP, OK, PENDING, UNIT_COLUMNS, StageInputError, error_kind, fail, ledger_schema, pack,
                   require_columns, require_fields, unpack)

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
    resolution: int
    run_seed: int
    instruction: str | None  # shared instruction for every row, or None: each row's own
    resize: str = "fit"  # working image: fit | crop | reference (mgie.images.work_size)
    max_pixels: int = 1024 * 1024  # --resize reference: a larger working image is refused as an error row


def decode_unit(row: dict[str, Any], settings: DecodeSettings) -> dict[str, Any]:
    """Raw samples -> working-resolution RGB pixels, instruction and seed (map)."""
    require_columns("decode", row, ("payload", "skip"))
    if row["skip"]:
        return row
    samples = unpack(row["payload"])
    require_fields("decode", samples, ("key", "fields"))
    for s in samples:
        if s["status"] == PENDING:
            _decode_sample(s, settings)
    row["payload"] = pack(samples)
    return row


def _decode_sample(s: dict[str, Any], settings: DecodeSettings) -> None:
    import numpy as np
    from PIL import Image

    from mgie.images import work_image, work_size

    t0 = time.perf_counter()
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
        hint = (" (a member name with more dots than the extension? WebDataset splits a name at its first dot, "
                "so 'photo.v2.txt' is field 'v2.txt' of key 'photo')" if dotted else "")
        return fail(s, "validate", f"missing instruction: no txt field, no json 'instruction', no --instruction; "
                                   f"the sample has fields {sorted(fields)}{hint}")
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
            img.load()
            rgb = as_viewed_rgb(img)
        s["input_size"] = rgb.size  # upright (w, h): the full-size output's size
        size = work_size(rgb.width, rgb.height, settings.resize, settings.resolution)
        if size[0] * size[1] > settings.max_pixels:
            return fail(s, "decode", f"image {size[0]}x{size[1]} at --resize {settings.resize} is "
                                     f"{size[0] * size[1]} pixels, over --max-pixels {settings.max_pixels}; use "
                                     f"--resize fit or raise --max-pixels")
        work = work_image(rgb, settings.resize, settings.resolution)
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


# ----------------------------------------------------------------------------------------------- write


@dataclass(frozen=True)
class WriteSettings:
    output_url: str
    output_options: dict
    run_fingerprint: str
    sampler: dict
    fault_spec: str = ""
    # other jobs on this plan (eval, make-dataset): sample fields that become ledger columns and JSON keys,
    # as (field, pyarrow type name), e.g. ("metric_l1", "float64")
    extra_columns: tuple[tuple[str, str], ...] = ()
    copy_input: bool = False  # also store the input as the output shows it (`<key>.input.<ext>`) and the goal
    edited_optional: bool = False  # a row without an edited image is still ok (make-dataset without --edit)
    precision: dict | None = None  # the model actors' device and dtype (they change the bytes of the edit)
    outputs: OutputSettings = OutputSettings()  # size, format, quality, metadata of the output images


def write_unit(row: dict[str, Any], settings: WriteSettings) -> dict[str, Any]:
    """Encodes PNG + JSON, writes the unit's tar and ledger file, returns the record to commit (map).

    The files are named after the unit (deterministic), so a retried task overwrites the same names.
    Nothing here is visible to readers until the driver writes commits/<unit>.json.
    """
    require_columns("write", row, UNIT_COLUMNS)
    faults.configure(settings.fault_spec)
    out = {k: row[k] for k in UNIT_COLUMNS if k != "payload"}
    out.update(name=unit_name(row["unit"], row["attempt"]), ok=0, error=0, kept=0, qa_failed=0, error_rows="[]",
               error_kinds="{}", ledger="", tar="", ms_json="{}", unreadable_tail="")
    if row["skip"]:
        return out
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .shards import read_members, split_name, tar_bytes
    from .storage import Store

    store = Store(settings.output_url, settings.output_options)
    samples = sorted(unpack(row["payload"]), key=lambda s: s["row_index"])
    require_fields("write", samples, ("expressive_instruction", "seed", "instruction", "source", "pixels")
                   + (() if settings.edited_optional else ("edited",)))
    name = out["name"]
    tar_rel, ledger_rel = f"shards/{name}.tar", f"ledger/{name}.parquet"

    previous_rows, previous_members = {}, {}
    if any(s["status"] == KEEP for s in samples):
        prev = row["previous"]
        with store.fs.open(store.path(f"ledger/{prev}.parquet"), "rb") as f:
            previous_rows = {r["row_index"]: r for r in pq.read_table(f).to_pylist()}
        if store.exists(f"shards/{prev}.tar"):
            previous_members = read_members(store.read_bytes(f"shards/{prev}.tar"))

    members: list[tuple[str, bytes]] = []
    ledger: list[dict[str, Any]] = []
    totals = {"decode": 0.0, "express": 0.0, "edit": 0.0, "encode": 0.0}
    for s in samples:
        if s["status"] == KEEP:
            if s["row_index"] not in previous_rows:  # the read stage keeps only rows the old unit holds
                raise StageInputError(f"stage 'write': row {s['row_index']} of {row['shard']} is to be kept from "
                                      f"{row['previous']}, whose ledger has no such row")
            old = dict(previous_rows[s["row_index"]])
            members += [(m, data) for m, data in previous_members.items() if split_name(m)[0] == s["key"]]
            old["output_shard"] = tar_rel if old["status"] == OK else None
            old["unit"] = name
            ledger.append(old)
            out["kept"] += 1
            continue
        if s["status"] == PENDING:
            _encode_sample(s, row["shard"], settings, members)
        if s.get("unreadable_tail"):
            out["unreadable_tail"] = json.dumps(s["unreadable_tail"])
        ledger.append(_ledger_row(s, row["shard"], tar_rel, name, settings.run_fingerprint, settings.outputs.resize)
                      | {f: s.get(f) for f, _ in settings.extra_columns})
        out["ok" if s["status"] == OK else "error"] += 1
        for stage in totals:
            totals[stage] += s.get(f"ms_{stage}") or 0.0

    if members:
        store.write_atomic(tar_rel, tar_bytes(members))
        out["tar"] = tar_rel
    schema = ledger_schema()
    for f, type_name in settings.extra_columns:
        schema = schema.append(pa.field(f, getattr(pa, type_name)()))
    table = pa.Table.from_pylist(ledger, schema=schema)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    faults.maybe_sleep("write")
    store.write_atomic(ledger_rel, buf.getvalue().to_pybytes())
    out["ledger"] = ledger_rel
    errors = [r for r in ledger if r["status"] == ERROR]
    out["error_rows"] = json.dumps([r["row_index"] for r in errors])
    out["qa_failed"] = sum(r.get("qa_pass") is False for r in ledger)
    out["error_kinds"] = json.dumps(Counter(error_kind(r["error_stage"], r["error"]) for r in errors))
    out["ms_json"] = json.dumps(totals)
    return out


def _encode_sample(s: dict[str, Any], shard: str, settings: WriteSettings, members: list) -> None:
    t0 = time.perf_counter()
    try:
        encoded = render_images(s, settings.outputs, settings.copy_input)
    except Exception as e:  # a broken output array is this row's error, not the job's
        return fail(s, "encode", e)
    images = [(e.member, e.data) for e in encoded]
    if s.get("edited") is not None:  # the edited image is rendered first: its size and hash go to the ledger
        s["output_size"], s["output_sha256"] = (encoded[0].width, encoded[0].height), encoded[0].sha256
        s["output_member"] = encoded[0].member
        # the figures came from the edit actor (pipeline.quality); the bounds are the run's output settings
        s["qa_pass"] = settings.outputs.qa_pass(s["qa_change"], s.get("qa_clip_dir"))
    if settings.copy_input and s.get("goal") is not None:
        images.append((f"{s['key']}.goal.{_image_ext(s['goal'])}", s["goal"]))
    record = {
        "key": s["key"], "source_shard": shard, "row_index": s["row_index"],
        "instruction": s["instruction"], "expressive_instruction": s["expressive_instruction"],
        "seed": s["seed"], "sampler": settings.sampler, "run_fingerprint": settings.run_fingerprint,
        "precision": settings.precision,
        "input": s.get("meta") or {}, "instruction_truncated": s.get("instruction_truncated", False),
        "sizes": {"resize": settings.outputs.resize, "input": s.get("input_size"), "work": s.get("work_size"),
                  "output": s.get("output_size")},
        **{f: s.get(f) for f, _ in settings.extra_columns},
    }
    members.extend(images)
    members.append((f"{s['key']}.json", json.dumps(record, sort_keys=True, ensure_ascii=False).encode()))
    s["status"] = OK
    s["ms_encode"] = _ms(t0)


def _image_ext(data: bytes) -> str:
    """File extension of image bytes from their signature (goal images are copied as they came)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


def _ledger_row(s: dict[str, Any], shard: str, tar_rel: str, unit: str, fingerprint: str,
                resize: str = "fit") -> dict[str, Any]:
    ok = s["status"] == OK
    return {
        "key": s["key"], "source_shard": shard, "status": OK if ok else ERROR,
        "error_stage": None if ok else s.get("error_stage"), "error": None if ok else s.get("error"),
        "instruction": s.get("instruction"), "expressive_instruction": s.get("expressive_instruction"),
        "seed": s.get("seed"), "output_shard": tar_rel if ok else None, "run_fingerprint": fingerprint,
        "ms_decode": s.get("ms_decode"), "ms_express": s.get("ms_express"), "ms_edit": s.get("ms_edit"),
        "ms_encode": s.get("ms_encode"), "row_index": s["row_index"], "unit": unit,
        **_output_columns(s, resize),
    }


def _output_columns(s: dict[str, Any], resize: str) -> dict[str, Any]:
    """input / work / output (w, h) where the row got that far, the resize mode, the output file's name and
    hash, the auto-QA figures."""
    cols: dict[str, Any] = {"resize": resize, "output_sha256": s.get("output_sha256"),
                            "output_member": s.get("output_member"),
                            **{f: s.get(f) for f in (*QA_COLUMNS, "qa_pass")}}
    for name in ("input", "work", "output"):
        width, height = s.get(f"{name}_size") or (None, None)
        cols.update({f"{name}_width": width, f"{name}_height": height})
    return cols
