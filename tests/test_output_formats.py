"""The writer seam and the field table, without Ray: a unit written in each --output-format holds the same rows,
images and per-sample JSON; a new attempt keeps rows in either format; the ledger, status and report read both;
the ledger schema, the sample JSON and the report's columns all come from pipeline/fields.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import fields, ledger, rows
from pipeline.config import EditConfig
from pipeline.editors import ModelSpec
from pipeline.identity import fingerprint_of, identity_diff, resolve_sampler, run_identity
from pipeline.layout import OutputLayout
from pipeline.outputs import OutputSettings
from pipeline.shards import read_members
from pipeline.storage import Store
from pipeline.unit_record import WrittenUnit
from pipeline.write_stage import WriteSettings, write_unit

SHARD = "/nonexistent/in/s.tar"  # the report finds no source thumbnail; the rows still show


def _png(seed: int, size=(24, 16)) -> bytes:
    arr = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _samples(keep: tuple[int, ...] = ()) -> list[dict]:
    """Four finished rows: row 1 has a goal image, row 2 failed at decode; rows in `keep` are to be kept."""
    out = []
    for i in range(4):
        if i in keep:
            out.append({"key": f"k{i}", "row_index": i, "status": rows.KEEP})
            continue
        s = {
            "key": f"k{i}",
            "row_index": i,
            "status": rows.PENDING,
            "instruction": f"make it {i}",
            "seed": i,
            "expressive_instruction": "e",
            "edited": np.full((16, 24, 3), 40 * i, np.uint8),
            "meta": {"sku": i},
            "source": _png(i),
            "pixels": np.ones((16, 24, 3), np.uint8),
            "input_size": (24, 16),
            "work_size": (24, 16),
            "ms_decode": 1.0,
        }
        if i == 1:
            s["goal"] = _png(9)
        if i == 2:
            rows.fail(s, "decode", "OSError: broken data stream")
        out.append(s)
    return out


def _unit(attempt: int = 0, keep: tuple[int, ...] = ()) -> dict:
    return {
        "unit": "u",
        "shard": SHARD,
        "index": 0,
        "attempt": attempt,
        "last": True,
        "n_rows": 4,
        "skip": False,
        "previous": "u" if attempt else "",
        "payload": rows.pack(_samples(keep)),
    }


def _settings(out, fmt: str, copy_input: bool = False, **kw) -> WriteSettings:
    return WriteSettings(
        str(out),
        {},
        "fp",
        {"num_inference_steps": 1},
        outputs=OutputSettings(output_size="work", output_format=fmt, copy_input=copy_input),
        **kw,
    )


def _unit_contents(store: Store, meta: dict, fmt: str) -> dict[int, dict]:
    """row index -> ledger row (without where it was written) + its image members and JSON, read back."""
    table = pq.read_table(store.path(meta["ledger"])).to_pylist()
    members = {}
    if fmt == "webdataset" and meta["tar"]:
        members = read_members(store.read_bytes(meta["tar"]))
    out = {}
    for row in table:
        key = row["key"]
        if fmt == "parquet":
            for name, col in (("png", "image"), ("input.png", "input_image")):
                if row.get(col) is not None:
                    members[f"{key}.{name}"] = row[col]
            if row.get("goal_image") is not None:
                members[f"{key}.goal.{row['goal_image_format']}"] = row["goal_image"]
            if row["sample_json"] is not None:
                members[f"{key}.json"] = row["sample_json"].encode()
            for col in ("image", "image_format", "sample_json", "input_image", "goal_image", "goal_image_format"):
                row.pop(col, None)
        for col in ("output_shard", "unit", "ms_encode"):
            row.pop(col)
        row["members"] = {m: d for m, d in members.items() if m.split(".", 1)[0] == key}
        out[row["row_index"]] = row
    return out


@pytest.mark.parametrize("copy_input", [False, True])
def test_both_formats_hold_the_same_rows_images_and_sample_json(tmp_path, copy_input):
    got = {}
    for fmt in ("webdataset", "parquet"):
        store = Store.open(str(tmp_path / fmt))
        meta = write_unit(_unit(), _settings(store.url, fmt, copy_input=copy_input))
        assert (meta["ok"], meta["error"], meta["error_rows"], meta["output_format"]) == (3, 1, "[2]", fmt)
        got[fmt] = _unit_contents(store, meta, fmt)
    assert got["webdataset"] == got["parquet"]
    rows_ = got["parquet"]
    assert json.loads(rows_[3]["members"]["k3.json"])["input"] == {"sku": 3}
    assert rows_[2]["status"] == "error" and rows_[2]["members"] == {}
    assert ("k1.goal.png" in rows_[1]["members"]) == copy_input == ("k1.input.png" in rows_[1]["members"])

    table = pq.read_table(tmp_path / "parquet" / "data" / "u.parquet")
    copies = ["input_image", "goal_image", "goal_image_format"] if copy_input else []
    assert table.column_names == fields.ledger_schema().names + ["image", "image_format", "sample_json"] + copies
    first = table.slice(0, 1).to_pylist()[0]
    assert first["output_shard"] == "data/u.parquet" and first["image_format"] == "png"
    assert Image.open(io.BytesIO(first["image"])).size == (24, 16)
    assert not (tmp_path / "parquet" / "shards").exists() and not (tmp_path / "parquet" / "ledger").exists()


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_a_new_attempt_keeps_rows_from_the_unit_it_replaces(tmp_path, fmt):
    store = Store.open(str(tmp_path / "out"))
    settings = _settings(store.url, fmt, copy_input=True)
    first = _unit_contents(store, write_unit(_unit(), settings), fmt)
    meta = write_unit(_unit(attempt=1, keep=(0, 1)), settings)  # rows 0 and 1 are kept, 2 and 3 redone
    assert (meta["kept"], meta["ok"], meta["error"]) == (2, 1, 1)
    again = _unit_contents(store, meta, fmt)
    assert again[0] == first[0] and again[1] == first[1]  # the same ledger row, images and JSON, copied
    ledger_rows = pq.read_table(store.path(meta["ledger"])).to_pylist()
    assert {r["unit"] for r in ledger_rows} == {"u-r1"}
    writes_to = OutputLayout().shard("u-r1") if fmt == "webdataset" else OutputLayout().data("u-r1")
    assert ledger_rows[0]["output_shard"] == writes_to


def _committed_output(tmp_path, fmt: str) -> Store:
    """An output holding one committed unit written in `fmt`, and one written unit never committed."""
    store = Store.open(str(tmp_path / "out"))
    identity = {"outputs": {"format": fmt}}
    ledger.ensure_run_record(store, identity, fingerprint_of(identity), {"output_format": fmt})
    settings = _settings(store.url, fmt)
    rec = ledger.commit_record(WrittenUnit.from_row(write_unit(_unit(), settings)), fingerprint_of(identity))
    store.write_atomic(OutputLayout().commit(rec["unit"]), json.dumps(rec).encode())
    orphan = dict(_unit(), unit="v", index=1)
    write_unit(orphan, settings)  # a crash before its commit record
    return store


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_ledger_status_and_report_read_either_format(tmp_path, fmt):
    from pipeline.reporting.report import build_report
    from pipeline.reporting.status import output_status
    from tests.test_report import page_data

    store = _committed_output(tmp_path, fmt)
    state = ledger.load_state(store)
    folder = "data" if fmt == "parquet" else "ledger"
    assert len(state.commits) == 1 and f"{folder}/v.parquet" in state.orphans
    assert state.commits["u"]["output_format"] == fmt
    table = ledger.read_ledger(store.url)
    assert table.schema == fields.ledger_schema() and table.num_rows == 4  # no image columns, no orphan rows
    status = output_status(store.url)
    assert status["status"] == {"ok": 3, "error": 1} and status["output_format"] == fmt
    assert status["errors_by_kind"] == {"decode:OSError": 1} and status["orphan_files"] >= 1
    page = build_report(store.url)
    views = {r["key"]: r for r in page_data(page)["rows"]}
    assert views["k0"]["img"]["edit"].startswith("data:image/jpeg;base64,") and views["k2"]["img"]["edit"] is None
    ledger.sweep(store, state)
    assert store.list(folder) == ["u.parquet"]


def test_adding_a_field_to_the_table_shows_in_the_schema_the_sample_json_and_the_report(tmp_path, monkeypatch):
    from pipeline.reporting.report import build_report
    from tests.test_report import page_data

    new = fields.Field("mood", "string", "a new column", sample_json=True, report="mood")
    monkeypatch.setattr(fields, "LEDGER_FIELDS", fields.LEDGER_FIELDS + (new,))
    assert "mood" in fields.ledger_schema().names and "mood" in fields.sample_json_keys()
    payload = _samples()
    payload[0]["mood"] = "sunny"  # a stage leaves the value in the sample under the field's name
    store = Store.open(str(tmp_path / "out"))
    meta = write_unit(dict(_unit(), payload=rows.pack(payload)), _settings(store.url, "webdataset"))
    members = read_members(store.read_bytes(meta["tar"]))
    assert json.loads(members["k0.json"])["mood"] == "sunny" and json.loads(members["k3.json"])["mood"] is None
    assert pq.read_table(store.path(meta["ledger"])).column("mood").to_pylist()[0] == "sunny"
    rec = ledger.commit_record(WrittenUnit.from_row(meta), "fp")
    store.write_atomic(OutputLayout().commit(rec["unit"]), json.dumps(rec).encode())
    data = page_data(build_report(store.url))
    assert "mood" in data["fields"] and {r["key"]: r for r in data["rows"]}["k0"]["mood"] == "sunny"


def test_the_ledger_and_sample_json_keys_are_the_tables():
    """Every key of today's sample JSON and every ledger column is a field of the table, nothing else."""
    assert fields.ledger_schema().names == [f.name for f in fields.LEDGER_FIELDS if f.ledger]
    assert set(fields.sample_json_keys()) == {
        "key",
        "source_shard",
        "row_index",
        "instruction",
        "expressive_instruction",
        "seed",
        "sampler",
        "run_fingerprint",
        "precision",
        "input",
        "instruction_truncated",
        "sizes",
    }
    assert fields.tally([{"status": "ok", "qa_pass": False}, {"status": "error", "qa_pass": None}]) == {
        "ok": 1,
        "error": 1,
        "qa_failed": 1,
    }
    from pipeline.reporting.report import text_fields

    assert text_fields() == ["instruction", "expressive", "seed", "explanation", "summary"]


def _identity(**overrides):
    cfg = EditConfig.of(input="x", output="y", **overrides)
    model = ModelSpec("tiny").describe()
    sampler, seed = resolve_sampler(cfg.sampling, model["config"])
    return run_identity(cfg, model, sampler, seed)


def test_the_output_format_is_part_of_the_run_identity():
    base = _identity()
    assert "format" not in base["outputs"]  # the default: runs from before the flag keep their fingerprint
    parquet = _identity(output_format="parquet")
    assert fingerprint_of(parquet) != fingerprint_of(base)
    assert identity_diff(base, parquet) == ["outputs.format: 'webdataset' -> 'parquet'"]
    with pytest.raises(ValueError, match="--output-format must be one of webdataset, parquet"):
        EditConfig.of(input="x", output="y", output_format="csv")


def test_unit_files_of_every_format_are_known_to_the_layout():
    layout = OutputLayout("s3://b/out")
    assert [layout.unit_of(p) for p in layout.unit_files("u-r1")] == ["u-r1"] * 3
    assert layout.unit_of("data/.tmp-1-u.parquet") is None and layout.unit_of("run.json") is None
    assert "s3://b/out/data/" in layout.managed_urls()


def test_training_reads_a_webdataset_make_dataset_output_and_refuses_a_parquet_one(tmp_path):
    from pipeline.training.data import training_shards

    webdataset = _committed_output(tmp_path / "w", "webdataset")
    assert training_shards(webdataset.url) == [f"{webdataset.url}/{OutputLayout().shard('u')}"]  # committed only
    parquet = _committed_output(tmp_path / "p", "parquet")
    with pytest.raises(ValueError, match="--output-format parquet; training reads WebDataset triplets"):
        training_shards(parquet.url)


def test_a_finished_parquet_output_loads_as_one_table(tmp_path):
    """Units of only error rows have the same schema (typed, all-null image columns), so the folder reads as
    one table, as DuckDB, Spark and HF datasets read it."""
    import pyarrow as pa

    store = Store.open(str(tmp_path / "out"))
    settings = _settings(store.url, "parquet", copy_input=True)
    write_unit(_unit(), settings)
    failed = _samples()
    for s in failed:
        rows.fail(s, "express", "ValueError: injected")
    write_unit(dict(_unit(), unit="w", index=1, payload=rows.pack(failed)), settings)
    table = pq.read_table(tmp_path / "out" / "data")
    assert table.num_rows == 8 and table.schema.field("image").type == pa.binary()
    assert sum(v is not None for v in table.column("image").to_pylist()) == 3
