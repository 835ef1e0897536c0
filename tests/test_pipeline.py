"""Pipeline pieces without Ray: storage and patterns, shard reading, decode/validate, model stages with
pluggable editors, commit state and orphans, the run fingerprint, the command line."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline import ledger, model_stages, rows, stages
from pipeline.config import EditConfig, pick_resources
from pipeline.editors import ModelSpec, NoopEditor
from pipeline.identity import SamplerSettings, fingerprint_of, identity_diff, resolve_sampler, run_identity
from pipeline.inputs import SHARDS, resolve_sources
from pipeline.location import Reach
from pipeline.shards import ShardReadError, iter_samples, read_members, tar_bytes, write_samples
from pipeline.storage import Store, expand_braces


def png(seed: int, size=(40, 56)) -> bytes:
    arr = np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ storage, patterns


def test_expand_braces_ranges_lists_and_padding():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("s-{8..10}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar"]
    assert expand_braces("{a,b}/x-{0..1}") == ["a/x-0", "a/x-1", "b/x-0", "b/x-1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="cannot expand"):
        expand_braces("s-{abc}.tar")


def test_resolve_inputs_local(tmp_path):
    for name in ("a-000.tar", "a-001.tar", "a-002.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert resolve_sources([f"{tmp_path}/a-{{000..001}}.tar"], kinds=SHARDS) == [
        f"{tmp_path}/a-000.tar",
        f"{tmp_path}/a-001.tar",
    ]
    assert resolve_sources([f"file://{tmp_path}/a-*.tar"], kinds=SHARDS)[-1] == f"{tmp_path}/a-002.tar"
    assert len(resolve_sources([str(tmp_path)], kinds=SHARDS)) == 3  # a folder: every .tar under it, nothing else
    with pytest.raises(FileNotFoundError, match="2 shard.*a-008.tar, .*a-009.tar"):
        resolve_sources([f"{tmp_path}/a-{{008..009}}.tar"], kinds=SHARDS)


def test_resolve_inputs_and_atomic_writes_on_s3(s3):
    bucket = s3.new_bucket()
    client = s3.client()
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"in/shard-{i:03d}.tar", Body=b"x")
    # AWS_ENDPOINT_URL (set by the fixture) is all it takes; an explicit endpoint works the same way
    assert resolve_sources([f"s3://{bucket}/in/shard-{{000..001}}.tar"], kinds=SHARDS) == [
        f"s3://{bucket}/in/shard-000.tar",
        f"s3://{bucket}/in/shard-001.tar",
    ]
    assert len(resolve_sources([f"s3://{bucket}/in/"], Reach(s3.url), SHARDS)) == 3
    assert resolve_sources([f"s3://{bucket}/in/*-002.tar"], kinds=SHARDS) == [f"s3://{bucket}/in/shard-002.tar"]
    store = Store.open(Reach(s3.url).at(f"s3://{bucket}/out"))
    store.write_atomic("commits/u.json", b"{}")
    assert store.list("commits") == ["u.json"] and store.read_bytes("commits/u.json") == b"{}"
    store.delete("commits/u.json")
    assert store.list("commits") == []


def test_local_atomic_write_leaves_no_temp_files(tmp_path):
    store = Store.open(f"file://{tmp_path}/out")
    store.write_atomic("ledger/a.parquet", b"1")
    store.write_atomic("ledger/a.parquet", b"2")
    assert store.list("ledger") == ["a.parquet"] and store.read_bytes("ledger/a.parquet") == b"2"


# ------------------------------------------------------------------------------------------------ shards


def test_iter_samples_groups_by_key_and_reports_a_broken_tar():
    data = write_samples([("d/0001", {"jpg": b"a", "txt": b"t"}), ("d/0002", {"goal.png": b"g", "json": b"{}"})])
    got = list(iter_samples(io.BytesIO(data)))
    assert got == [("d/0001", {"jpg": b"a", "txt": b"t"}), ("d/0002", {"goal.png": b"g", "json": b"{}"})]
    big = write_samples([(f"k{i}", {"png": bytes(3000)}) for i in range(3)])
    seen = []
    with pytest.raises(ShardReadError) as err:
        for key, _ in iter_samples(io.BytesIO(big[:6000])):  # cut inside the second member
            seen.append(key)
    assert seen == ["k0"] and err.value.samples_read == 1


def test_tar_bytes_is_deterministic():
    members = [("k.png", b"\x89PNG..."), ("k.json", b"{}")]
    assert tar_bytes(members) == tar_bytes(list(members))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(members))) as tar:
        assert [m.mtime for m in tar] == [0, 0]  # not the clock: bytes written a second apart are equal too
    assert read_members(tar_bytes(members)) == dict(members)


def _read(shard_bytes: bytes, tmp_path, unit_rows=3, committed=None, retry=False):
    path = tmp_path / "s.tar"
    path.write_bytes(shard_bytes)
    item = {"shard": str(path), "committed": json.dumps(committed or {})}
    return list(stages.read_shard(item, stages.ReadSettings(unit_rows, retry, Reach()))), str(path)


def test_read_cuts_units_in_shard_order_and_marks_the_last(tmp_path):
    data = write_samples([(f"k{i}", {"png": b"x", "txt": b"t"}) for i in range(7)])
    units, path = _read(data, tmp_path)
    assert [(u["index"], u["n_rows"], u["last"], u["skip"]) for u in units] == [
        (0, 3, False, False),
        (1, 3, False, False),
        (2, 1, True, False),
    ]
    assert [s["key"] for s in rows.unpack(units[1]["payload"])] == ["k3", "k4", "k5"]
    assert units[0]["unit"] == stages.unit_base(path, 0) and units[0]["unit"].endswith("-00000")


def test_read_turns_duplicates_and_a_truncated_tar_into_error_rows(tmp_path):
    data = write_samples(
        [("a", {"png": b"1"}), ("b", {"png": b"2"}), ("a", {"png": b"3"})]
        + [(f"z{i}", {"png": b"0" * 2000}) for i in range(4)]
    )
    units, _ = _read(data[: 3 * 1024 + 2560 + 1000], tmp_path, unit_rows=10)  # cut inside z1
    samples = rows.unpack(units[0]["payload"])
    dup = samples[2]
    assert dup["status"] == rows.ERROR and dup["error_stage"] == "read" and "duplicate key" in dup["error"]
    broken = samples[-1]
    assert broken["error_stage"] == "read" and "unreadable" in broken["error"]
    assert units[-1]["last"]


def test_read_skips_committed_units_and_retries_only_error_rows(tmp_path):
    data = write_samples([(f"k{i}", {"png": b"x", "txt": b"t"}) for i in range(6)])
    committed = {
        "0": {"unit": "u0", "attempt": 0, "n_rows": 3, "last": False, "error_rows": [1]},
        "1": {"unit": "u1", "attempt": 0, "n_rows": 3, "last": True, "error_rows": []},
    }
    units, _ = _read(data, tmp_path, committed=committed)
    assert all(u["skip"] for u in units) and sum(u["n_rows"] for u in units) == 6
    by_index = {int(k): v for k, v in committed.items()}
    assert stages.shard_done(by_index, retry_errors=False) and not stages.shard_done(by_index, retry_errors=True)
    units, _ = _read(data, tmp_path, committed=committed, retry=True)
    assert [u["skip"] for u in units] == [False, True]
    redo = units[0]
    assert redo["attempt"] == 1 and redo["previous"] == "u0"
    assert [s["status"] for s in rows.unpack(redo["payload"])] == [rows.KEEP, rows.PENDING, rows.KEEP]


# ------------------------------------------------------------------------------------------------ decode


def _decode(fields_by_key: dict[str, dict[str, bytes]], instruction=None):
    samples = [
        {"key": k, "row_index": i, "status": rows.PENDING, "fields": f}
        for i, (k, f) in enumerate(fields_by_key.items())
    ]
    row = {"payload": rows.pack(samples), "skip": False}
    out = stages.decode_unit(row, stages.DecodeSettings(resolution=32, run_seed=7, instruction=instruction))
    return {s["key"]: s for s in rows.unpack(out["payload"])}


def test_decode_validates_each_row_and_keeps_going():
    got = _decode(
        {
            "good_txt": {"png": png(0), "txt": b"make it brighter"},
            "good_json": {
                "jpg": png(1),
                "json": json.dumps({"instruction": "add snow", "seed": 42, "sku": 9}).encode(),
            },
            "no_image": {"txt": b"x", "cls": b"3"},
            "bad_image": {"png": b"not an image", "txt": b"x"},
            "no_instruction": {"png": png(2)},
            "bad_json": {"png": png(3), "json": b"{oops"},
            "bad_seed": {"png": png(4), "json": b'{"instruction": "x", "seed": -1}'},
            "photo": {"v2.png": png(5), "v2.txt": b"make it warmer"},  # members photo.v2.png, photo.v2.txt
        }
    )
    dotted = got["photo"]["error"]
    assert "missing instruction" in dotted and "['v2.png', 'v2.txt']" in dotted and "first dot" in dotted
    assert "first dot" not in got["no_instruction"]["error"]
    # --resize fit (the default): 56 x 40 -> 32 x 24, aspect kept, sides multiples of 8
    assert got["good_txt"]["pixels"].shape == (24, 32, 3) and got["good_txt"]["instruction"] == "make it brighter"
    assert (got["good_txt"]["input_size"], got["good_txt"]["work_size"]) == ((56, 40), (32, 24))
    assert got["good_txt"]["seed"] == stages.row_seed(7, "good_txt")
    assert got["good_json"]["seed"] == 42 and got["good_json"]["meta"]["sku"] == 9
    expected = {
        "no_image": ("decode", "no image"),
        "bad_image": ("decode", "UnidentifiedImageError"),
        "no_instruction": ("validate", "missing instruction"),
        "bad_json": ("validate", "bad json"),
        "bad_seed": ("validate", "'seed' must be"),
    }
    for key, (stage, text) in expected.items():
        s = got[key]
        assert s["status"] == rows.ERROR and s["error_stage"] == stage and text in s["error"], (key, s)
        assert "0x" not in s["error"]  # no memory addresses: the same bad row gives the same message


def test_shared_instruction_overrides_row_instructions():
    got = _decode({"a": {"png": png(0), "txt": b"own"}, "b": {"png": png(1)}}, instruction="catalogue look")
    assert got["a"]["instruction"] == got["b"]["instruction"] == "catalogue look"


def test_row_seed_depends_on_run_seed_and_key_only():
    assert stages.row_seed(1, "k") == stages.row_seed(1, "k") != stages.row_seed(2, "k")
    assert 0 <= stages.row_seed(1, "k") < 2**31


# ------------------------------------------------------------------------------------------ model stages


class _FlakyEditor(NoopEditor):
    """Raises ValueError for one instruction, as mgie does for invalid input."""

    def express(self, images, instructions):
        if "poison" in instructions:
            raise ValueError(f"instructions[{instructions.index('poison')}] is poisoned")
        return super().express(images, instructions)


class _Spec:
    def __init__(self, editor):
        self.editor = editor

    def load(self, parts):
        return self.editor


def _pending(n, instructions=None):
    return [
        {
            "key": f"k{i}",
            "row_index": i,
            "status": rows.PENDING,
            "seed": i,
            "pixels": np.full((32, 32, 3), i, np.uint8),
            "instruction": (instructions or {}).get(i, f"edit {i}"),
        }
        for i in range(n)
    ]


def test_model_stages_run_any_editor_and_isolate_a_bad_row():
    samples = _pending(5, {3: "poison"})
    row = {"payload": rows.pack(samples), "skip": False}
    row = model_stages.ExpressStage(_Spec(_FlakyEditor()), batch_size=2)(row)
    row = model_stages.EditStage(_Spec(_FlakyEditor()), batch_size=2, sample=SamplerSettings(1, 1.0, 1.0, 32))(row)
    out = rows.unpack(row["payload"])
    assert [s["status"] for s in out] == [rows.PENDING] * 3 + [rows.ERROR, rows.PENDING]
    assert out[3]["error_stage"] == "express" and "poisoned" in out[3]["error"]
    assert out[2]["expressive_instruction"] == "edit 2" and np.array_equal(out[4]["edited"], samples[4]["pixels"])


def test_tiny_mgie_stages_batch_within_a_unit():
    spec = ModelSpec("tiny")
    samples = _pending(3)
    row = model_stages.ExpressStage(spec, batch_size=2)({"payload": rows.pack(samples), "skip": False})
    assert rows.unpack(row["payload"])[0]["conditioning"].shape == (77, 32)  # (S, C) on the host, to travel
    row = model_stages.EditStage(spec, batch_size=2, sample=SamplerSettings(2, 7.5, 1.5, 32))(row)
    out = rows.unpack(row["payload"])
    assert all(isinstance(s["expressive_instruction"], str) for s in out)
    assert out[0]["edited"].shape == (32, 32, 3)
    assert "conditioning" not in out[0]  # read by nobody after the edit: not carried to the writer
    assert out[0]["ms_express"] > 0 and out[0]["ms_edit"] > 0


def test_fused_stage_gives_the_split_layouts_outputs():
    """One actor holding both parts (the GPU default) edits exactly as the express + edit actor pair."""
    spec, sample = ModelSpec("tiny"), SamplerSettings(2, 7.5, 1.5, 32)
    samples = _pending(5, {3: "poison " * 200})  # one row over the token limit: truncated, still edited
    row = model_stages.ExpressStage(spec, batch_size=4)({"payload": rows.pack(samples), "skip": False})
    split = rows.unpack(model_stages.EditStage(spec, batch_size=2, sample=sample)(row)["payload"])
    fused_stage = model_stages.ExpressEditStage(spec, batch_size=2, express_batch_size=4, sample=sample)
    fused = rows.unpack(fused_stage({"payload": rows.pack(samples), "skip": False})["payload"])
    for a, b in zip(split, fused):
        assert a["expressive_instruction"] == b["expressive_instruction"]
        assert a["instruction_truncated"] == b["instruction_truncated"]
        assert np.array_equal(a["edited"], b["edited"]), a["key"]
        assert b["ms_express"] > 0 and b["ms_edit"] > 0 and "conditioning" not in b
    assert fused[3]["instruction_truncated"]


def test_fused_stage_fails_only_the_bad_row_in_either_part():
    stage = model_stages.ExpressEditStage(
        _Spec(_FlakyEditor()), batch_size=2, express_batch_size=3, sample=SamplerSettings(1, 1.0, 1.0, 32)
    )
    out = rows.unpack(stage({"payload": rows.pack(_pending(5, {1: "poison"})), "skip": False})["payload"])
    assert [s["status"] for s in out] == [rows.PENDING, rows.ERROR] + [rows.PENDING] * 3
    assert out[1]["error_stage"] == "express" and np.array_equal(out[4]["edited"], out[4]["pixels"])


def test_a_stage_names_itself_and_the_missing_fields():
    bad = [{"key": "k0", "row_index": 0, "status": rows.PENDING, "pixels": np.zeros((32, 32, 3), np.uint8)}]
    with pytest.raises(rows.StageInputError, match=r"stage 'express'.*'k0'.*\['instruction'\]"):
        model_stages.ExpressStage(_Spec(NoopEditor()), batch_size=2)({"payload": rows.pack(bad), "skip": False})
    with pytest.raises(rows.StageInputError, match=r"stage 'decode': missing columns \['payload'\]"):
        stages.decode_unit({"skip": False}, stages.DecodeSettings(32, 0, None))


# ------------------------------------------------------------------------------- identity and commit state


def _identity(**overrides):
    cfg = EditConfig.of(input="x", output="y", **overrides)
    model = ModelSpec("tiny").describe()
    sampler, seed = resolve_sampler(cfg.sampling, model["config"])
    return run_identity(cfg, model, sampler, seed)


def test_run_fingerprint_tracks_output_relevant_settings_only():
    base = _identity()
    assert fingerprint_of(base) == fingerprint_of(_identity(limit=5, retry_errors=True, resources="cpu"))
    changed = _identity(steps=9)
    assert fingerprint_of(changed) != fingerprint_of(base)
    assert identity_diff(base, changed) == ["sampler.num_inference_steps: 4 -> 9"]
    assert fingerprint_of(_identity(instruction="x")) != fingerprint_of(base)
    assert fingerprint_of(_identity(unit_rows=8)) != fingerprint_of(base)
    assert identity_diff(base, _identity(rng="reference")) == ["sampler.rng: 'cpu' -> 'reference'"]
    # the weights' hash changes too (their fingerprint); the diff also names the setting the user changed
    assert identity_diff(base, _identity(model=ModelSpec("tiny", seed=1))) == ["model.seed: 0 -> 1"]
    # the actor layout and batch sizes are resources: the same run may resume with others
    assert fingerprint_of(_identity(layout="fused", batch_size=3, express_batch_size=5)) == fingerprint_of(base)
    with pytest.raises(ValueError, match="--rng must be"):
        EditConfig.of(input="x", output="y", rng="gpu")
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        EditConfig.of(input="x", output="y", batch_size=0)


def test_model_identity_without_loading_weights(tmp_path):
    from mgie import MGIE

    model = MGIE.from_preset("tiny", seed=3)
    model.save_pretrained(str(tmp_path / "ckpt"))
    described = ModelSpec(str(tmp_path / "ckpt")).describe()
    assert described["kind"] == "checkpoint" and described["fingerprint"] == model.fingerprint()
    assert ModelSpec("tiny", seed=3).describe()["fingerprint"] != ModelSpec("tiny", seed=4).describe()["fingerprint"]
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ModelSpec(str(tmp_path / "missing")).describe()


def test_run_record_refuses_another_configuration(tmp_path):
    store = Store.open(str(tmp_path / "out"))
    a, b = _identity(), _identity(steps=2)
    assert ledger.ensure_run_record(store, a, fingerprint_of(a), {})
    assert not ledger.ensure_run_record(store, a, fingerprint_of(a), {})
    with pytest.raises(ledger.RunConfigMismatch, match=r"sampler.num_inference_steps: 4 -> 2"):
        ledger.ensure_run_record(store, b, fingerprint_of(b), {})


def _commit(store, unit, attempt, shard="s.tar", index=0):
    base, _ = stages.parse_unit(unit)
    rec = {
        "unit": unit,
        "base": base,
        "attempt": attempt,
        "source_shard": shard,
        "index": index,
        "last": True,
        "n_rows": 2,
        "counts": {"ok": 2, "error": 0},
        "error_rows": [],
        "error_kinds": {},
        "files": {"ledger": f"ledger/{unit}.parquet", "shard": f"shards/{unit}.tar"},
    }
    store.write_atomic(f"commits/{unit}.json", json.dumps(rec).encode())


def test_state_finds_orphans_and_stale_attempts_and_sweep_removes_them(tmp_path):
    store = Store.open(str(tmp_path / "out"))
    for unit in ("a-00000", "a-00000-r1", "b-00000", "c-00000"):
        store.write_atomic(f"shards/{unit}.tar", b"t")
        store.write_atomic(f"ledger/{unit}.parquet", b"p")
    _commit(store, "a-00000", 0)
    _commit(store, "a-00000-r1", 1)  # a crash right after a retry's commit: two records of one unit
    _commit(store, "b-00000", 0, index=1)
    (tmp_path / "out" / "ledger" / ".tmp-123-x.parquet").write_bytes(b"half")
    state = ledger.load_state(store)
    assert sorted(r["unit"] for r in state.commits.values()) == ["a-00000-r1", "b-00000"]
    assert state.stale_commits == ["a-00000"]
    assert sorted(state.orphans) == [
        "ledger/.tmp-123-x.parquet",
        "ledger/a-00000.parquet",
        "ledger/c-00000.parquet",
        "shards/a-00000.tar",
        "shards/c-00000.tar",
    ]
    ledger.sweep(store, state)
    assert store.list("commits") == ["a-00000-r1.json", "b-00000.json"]
    assert store.list("shards") == ["a-00000-r1.tar", "b-00000.tar"]
    after = ledger.load_state(store)
    assert not after.orphans and not after.stale_commits


def test_unit_names_round_trip():
    base = stages.unit_base("s3://b/x/shard-007.tar", 12)
    assert base.startswith("shard-007-") and base.endswith("-00012")
    assert stages.parse_unit(stages.unit_name(base, 0)) == (base, 0)
    assert stages.parse_unit(stages.unit_name(base, 3)) == (base, 3)
    assert stages.unit_base("s3://other/shard-007.tar", 12) != base


def test_resources_auto_and_scaling():
    assert pick_resources("auto", 0).name == "cpu"
    gpu = pick_resources("auto", 4)
    assert gpu.edit.actors == 4 and gpu.edit.num_gpus == 0.5
    with pytest.raises(ValueError, match="unknown resources preset"):
        pick_resources("tpu", 0)


# ---------------------------------------------------------------------------------------- command line


def test_cli_registers_commands_and_every_option_shows_its_default(capsys):
    from jobs import cli

    parser = cli.build_parser()
    args = parser.parse_args(["edit", "--input", "s3://b/in/{0..1}.tar", "--output", "s3://b/out", "--steps", "3"])
    assert args.command == "edit" and args.steps == 3 and args.model_source == "mgie-tiny" and args.unit_rows == 64
    for command in ("edit", "status", "demo"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        for action in cli.build_parser()._subparsers._group_actions[0].choices[command]._actions:
            if action.option_strings and not action.required and action.dest != "help" and action.nargs != 0:
                assert "default" in action.help, (command, action.dest)
        assert "usage: mgie-batch" in text


def test_progress_line_has_rate_and_eta():
    from pipeline.progress import Progress

    out = io.StringIO()
    p = Progress(n_shards=4, stream=out)
    p.update("s0", 0, False, 10, 9, 1, 0)
    p.update("s0", 1, True, 5, 5, 0, 0)
    line = p.line()
    assert "15 rows (ok 14, error 1, skipped 0)" in line and "rows/s" in line and "shards 1/4" in line
    assert "ETA ?" not in line  # one finished shard gives an estimate for the other three


def test_write_stage_output_is_deterministic(tmp_path):
    settings = stages.WriteSettings(str(tmp_path / "o"), {}, "fp", {"num_inference_steps": 1})
    samples = [
        {
            "key": "k0",
            "row_index": 0,
            "status": rows.PENDING,
            "instruction": "i",
            "seed": 1,
            "expressive_instruction": "e",
            "edited": np.zeros((8, 8, 3), np.uint8),
            "meta": {"sku": 1},
            "source": png(0, (8, 8)),
            "pixels": np.ones((8, 8, 3), np.uint8),
        }
    ]

    def unit():
        return {
            "unit": "u",
            "shard": "s.tar",
            "index": 0,
            "attempt": 0,
            "last": True,
            "n_rows": 1,
            "skip": False,
            "previous": "",
            "payload": rows.pack([dict(s) for s in samples]),
        }

    meta = stages.write_unit(unit(), settings)
    first = (tmp_path / "o" / "shards" / "u.tar").read_bytes()
    stages.write_unit(unit(), settings)  # a retried task rewrites the same names with the same bytes
    assert (tmp_path / "o" / "shards" / "u.tar").read_bytes() == first
    assert meta["ok"] == 1 and meta["tar"] == "shards/u.tar"
    members = read_members(first)
    assert json.loads(members["k0.json"])["input"] == {"sku": 1}
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert all(m.mtime == 0 for m in tar)
