"""The write stage of the edit plan: one finished unit -> its files, and the record the driver commits.

    write_unit(row, settings)   encode each ok row's images, build its ledger row and per-sample JSON (the
                                fields in pipeline/fields.py), hand the unit to the run's `UnitWriter`
                                (pipeline/writers: --output-format), return a small record to commit

The files are named after the unit (deterministic), so a retried task overwrites the same names. Nothing
here is visible to readers until the driver writes the unit's commit record.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipeline import faults
from pipeline.fields import Field, ledger_fields, ledger_schema, sample_record, tally
from pipeline.layout import OutputLayout
from pipeline.outputs import OutputSettings, load_libraries, render_images
from pipeline.quality import QAChecks
from pipeline.quarantine import UnitGuard, UnitGuardSettings, guarded_unit
from pipeline.read_stage import unit_name
from pipeline.rows import (
    ERROR,
    KEEP,
    OK,
    UNIT_COLUMNS,
    StageInputError,
    error_kind,
    fail,
    require_columns,
    require_fields,
    unpack,
)
from pipeline.unit_record import WrittenUnit
from pipeline.writers import RowOutput, writer_for


@dataclass(frozen=True)
class WriteSettings:
    output_url: str
    output_options: dict
    run_fingerprint: str
    sampler: dict
    fault_spec: str = ""
    # other jobs on this plan (eval, make-dataset): fields the samples carry that become ledger columns and
    # JSON keys (pipeline.fields.SUMMARY_FIELDS, metric_field)
    extra_fields: tuple[Field, ...] = ()
    # a dataset's rows (make-dataset): the input as the output shows it and the goal are stored whatever
    # --copy-input says
    dataset_rows: bool = False
    edited_optional: bool = False  # a row without an edited image is still ok (make-dataset without --edit)
    precision: dict | None = None  # the model actors' device and dtype (they change the bytes of the edit)
    outputs: OutputSettings = OutputSettings()  # the output images and files: size, format, metadata
    qa: QAChecks = QAChecks()  # the bounds of each row's qa_pass

    @property
    def copies_input(self) -> bool:
        """Whether `<key>.input.<ext>` (and a goal the row carries) are written."""
        return self.outputs.copy_input or self.dataset_rows


def write_unit(row: dict[str, Any], settings: WriteSettings, guard: UnitGuardSettings | None = None) -> dict[str, Any]:
    """Encodes the unit's rows, has the run's writer write its files, returns the record to commit (map). A
    row that kills or hangs the encoder ends as an error row of its own (pipeline/quarantine.py)."""
    require_columns("write", row, UNIT_COLUMNS)
    faults.configure(settings.fault_spec)
    out = WrittenUnit.of(row, unit_name(row["unit"], row["attempt"]))
    if row["skip"]:
        return out.to_row()
    from pipeline.storage import Store

    store = Store(settings.output_url, settings.output_options)
    layout = OutputLayout(store.url)
    writer = writer_for(settings.outputs.output_format, settings.copies_input)
    samples = sorted(unpack(row["payload"]), key=lambda s: s["row_index"])
    require_fields(
        "write",
        samples,
        ("expressive_instruction", "seed", "instruction", "source", "pixels")
        + (() if settings.edited_optional else ("edited",)),
    )
    name = out.name
    output_path = writer.output_path(layout, name)
    previous = writer.read_rows(store, layout, row["previous"]) if any(s["status"] == KEEP for s in samples) else {}

    load_libraries()
    encoded: dict[int, list[tuple[str, str, bytes]]] = {}
    with UnitGuard(guard, "write", guarded_unit(row, guard)) as g:
        for batch in g.batches(samples):
            for s in batch:
                faults.maybe_crash_or_hang("write", s["key"])
                encoded[s["row_index"]] = _encode_sample(s, settings)
    rows: list[RowOutput] = []
    # wall ms per stage, and the CPU ms of the two CPU stages (in the commit record and the run summary, not the
    # ledger)
    totals = {"decode": 0.0, "express": 0.0, "edit": 0.0, "encode": 0.0, "cpu_decode": 0.0, "cpu_encode": 0.0}
    for s in samples:
        if s["status"] == KEEP:
            if s["row_index"] not in previous:  # the read stage keeps only rows the old unit holds
                raise StageInputError(
                    f"stage 'write': row {s['row_index']} of {row['shard']} is to be kept from "
                    f"{row['previous']}, whose ledger has no such row"
                )
            kept = previous[s["row_index"]]
            kept.ledger.update(output_shard=output_path if kept.ledger["status"] == OK else None, unit=name)
            rows.append(kept)
            out.kept += 1
            continue
        images = encoded.get(s["row_index"], [])
        if s.get("unreadable_tail"):
            out.unreadable_tail = s["unreadable_tail"]
        ledger = ledger_row(s, row["shard"], output_path, name, settings)
        record = None
        if s["status"] == OK:
            record = sample_record({**ledger, **_json_only(s, settings)}, settings.extra_fields)
            record = json.dumps(record, sort_keys=True, ensure_ascii=False).encode()
        rows.append(RowOutput(ledger, images, record))
        if s["status"] == OK:
            out.ok += 1
        else:
            out.error += 1
        for stage in totals:
            totals[stage] += s.get(f"cpu_ms_{stage[4:]}" if stage.startswith("cpu_") else f"ms_{stage}") or 0.0

    faults.maybe_sleep("write")
    files = writer.write(store, layout, name, rows, ledger_schema(settings.extra_fields))
    out.ledger, out.tar = files["ledger"], files["shard"] or ""
    ledger_rows = [r.ledger for r in rows]
    errors = [r for r in ledger_rows if r["status"] == ERROR]
    out.error_rows = [r["row_index"] for r in errors]
    out.counts.update({n: c for n, c in tally(ledger_rows).items() if n in out.counts})  # e.g. qa_failed
    out.error_kinds = dict(Counter(error_kind(r["error_stage"], r["error"]) for r in errors))
    out.ms = totals
    out.output_format = writer.name
    return out.to_row()


def _encode_sample(s: dict[str, Any], settings: WriteSettings) -> list[tuple[str, str, bytes]]:
    """The row's images as (role, extension, bytes): the edit, and with --copy-input the input as the
    output shows it and the goal as it came. Marks the row ok, or fails it at "encode"."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        encoded = render_images(s, settings.outputs, settings.copies_input)
    except Exception as e:  # a broken output array is this row's error, not the job's
        fail(s, "encode", e)
        return []
    images = [
        ("input" if e.member.startswith(f"{s['key']}.input.") else "image", e.member.rsplit(".", 1)[1], e.data)
        for e in encoded
    ]
    if s.get("edited") is not None:  # the edited image is rendered first: its size and hash go to the ledger
        s["output_size"], s["output_sha256"] = (encoded[0].width, encoded[0].height), encoded[0].sha256
        s["output_member"] = encoded[0].member
        # the figures came from the edit actor (pipeline.quality); the bounds are the run's output settings
        s["qa_pass"] = settings.qa.qa_pass(s.get("qa_change"), s.get("qa_clip_dir"))
    if settings.copies_input and s.get("goal") is not None:
        images.append(("goal", _image_ext(s["goal"]), s["goal"]))
    s["status"] = OK
    s["ms_encode"] = (time.perf_counter() - t0) * 1000.0
    s["cpu_ms_encode"] = (time.process_time() - cpu0) * 1000.0  # see stages._decode_sample
    return images


def _json_only(s: dict[str, Any], settings: WriteSettings) -> dict[str, Any]:
    """The per-sample JSON's keys that are no ledger column (pipeline.fields: `ledger=False`)."""
    return {
        "sampler": settings.sampler,
        "precision": settings.precision,
        "input": s.get("meta") or {},
        "instruction_truncated": s.get("instruction_truncated", False),
        "sizes": {
            "resize": settings.outputs.resize,
            "input": s.get("input_size"),
            "work": s.get("work_size"),
            "output": s.get("output_size"),
        },
    }


def _image_ext(data: bytes) -> str:
    """File extension of image bytes from their signature (goal images are copied as they came)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


def ledger_row(s: dict[str, Any], shard: str, output_path: str, unit: str, settings: WriteSettings) -> dict[str, Any]:
    """A sample -> its ledger row: every ledger field (pipeline.fields) from the sample under its own name,
    except the ones the write stage knows better (status, where the output went, the unit, the sizes)."""
    ok = s["status"] == OK
    row = {f.name: s.get(f.name) for f in ledger_fields(settings.extra_fields)}
    row.update(
        source_shard=shard,
        status=OK if ok else ERROR,
        output_shard=output_path if ok else None,
        run_fingerprint=settings.run_fingerprint,
        unit=unit,
        resize=settings.outputs.resize,
    )
    if ok:
        row.update(error_stage=None, error=None)
    for name in ("input", "work", "output"):
        width, height = s.get(f"{name}_size") or (None, None)
        row.update({f"{name}_width": width, f"{name}_height": height})
    return row
