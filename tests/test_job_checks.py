"""The checks every job on the edit plan makes before it works, as a user meets them at the command line:
where an output may lie next to its input, the dry run's verdict on a finished output, the goal eval scores
against, refusals kept apart from faults, the GPUs each resources preset asks for, and the defaults --help
shows. No test here starts Ray."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from jobs import cli
from tests.badinputs import good_jpeg, raw_tar


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the job starts (or attaches to) Ray."""
    from pipeline import cluster

    def refuse(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster, "ensure_ray", refuse)


def _photos_tar(path: Path) -> Path:
    path.write_bytes(raw_tar([("a.jpg", good_jpeg()), ("a.txt", b"make it brighter")]))
    return path


CPU = ("--model", "noop", "--resources", "cpu", "--device", "cpu", "--no-progress")


# ------------------------------------------------------------------ 1. an output beside or inside its input


@pytest.mark.parametrize(
    "spec,kinds",
    [
        ("photos.tar", ["tar"]),
        ("photos-{0..1}.tar", ["tar", "tar"]),
        ("*.tar", ["tar", "tar", "tar"]),
        ("list.jsonl", ["manifest"]),
    ],
    ids=["tar", "braces", "glob", "manifest"],
)
def test_an_output_beside_a_file_input_is_allowed(tmp_path, monkeypatch, no_ray, capsys, spec, kinds):
    """The first command most users type: the input and an output folder next to it, relative paths. A file
    reads only itself, and `*.tar` matches no file of out/ (its tars are in out/shards/)."""
    for name in ("photos.tar", "photos-0.tar", "photos-1.tar"):
        _photos_tar(tmp_path / name)
    (tmp_path / "a.jpg").write_bytes(good_jpeg())
    (tmp_path / "list.jsonl").write_text(json.dumps({"image": "a.jpg", "instruction": "make it brighter"}) + "\n")
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["edit", "--input", spec, "--output", "out", *CPU, "--dry-run", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["existing_run"] == "none" and [s["kind"] for s in plan["sources"]] == kinds
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "spec,output,needle",
    [
        ("in", "in/out", "inside the input folder"),
        ("in/", "in", "is the input folder"),
        ("in/**/*.tar", "in/out", "matches the files"),
        ("in/*/*/*.parquet", "in/out", "matches the files"),
    ],
    ids=["inside", "equal", "recursive-glob", "deep-glob"],
)
def test_an_output_the_input_would_read_back_is_refused(tmp_path, spec, output, needle):
    from pipeline.refusals import Refused
    from pipeline.storage import OutputInsideInput, check_output_outside_inputs

    with pytest.raises(OutputInsideInput, match=needle) as e:
        check_output_outside_inputs(str(tmp_path / spec), [], str(tmp_path / output))
    assert isinstance(e.value, Refused)


def test_a_folder_of_images_with_the_output_inside_is_refused_and_nothing_is_written(tmp_path, no_ray, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(good_jpeg())
    (photos / "a.txt").write_text("make it brighter")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = cli.main(["edit", "--input", str(photos), "--output", str(photos / "out"), *CPU])
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("mgie-batch edit:") and "logs go to" not in line]
    assert rc == 2 and len(ours) == 1 and "refused" in ours[0] and "inside the input folder" in ours[0], err
    # not even the log file of the refused run: its one line said everything
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------ 2. --dry-run with the run's own identity


DRY_RUN_JOBS = {
    "eval": ("eval", "--metric-models", "tiny", "--metrics", "l1"),
    "make-dataset": ("make-dataset", "--model", "tiny", "--resolution", "32"),
    "summarize": ("edit", "--model", "tiny", "--resolution", "32", "--expressive", "summarize"),
}


@pytest.mark.parametrize("job", list(DRY_RUN_JOBS))
def test_dry_run_on_the_jobs_own_output_reports_the_same_configuration(tmp_path, monkeypatch, no_ray, capsys, job):
    """The run record comes from the job itself (its plan is stubbed to stream no units, so no Ray);
    the dry run of the same command must then say it resumes."""
    from pipeline import run

    monkeypatch.setattr(run, "stream_units", lambda *a, **k: (iter(()), None))
    shard = _photos_tar(tmp_path / "photos.tar")
    argv = [
        *DRY_RUN_JOBS[job][:1],
        "--input",
        str(shard),
        "--output",
        str(tmp_path / "out"),
        *CPU,
        *DRY_RUN_JOBS[job][1:],
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    recorded = json.loads((tmp_path / "out" / "run.json").read_text())
    extension_keys = {"eval": "metrics", "make-dataset": "summarizer", "summarize": "expressive"}[job]
    assert any(extension_keys in key for key in recorded["identity"]), recorded["identity"].keys()
    capsys.readouterr()

    assert cli.main([*argv, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["existing_run"] == "same configuration: resumes"
    assert plan["fingerprint"] == recorded["run_fingerprint"]


# ------------------------------------------------------------------------- 3. the goal eval scores against


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("resize,size", [("crop", (32, 32)), ("fit", (32, 24)), ("reference", (48, 32))])
def test_eval_prepares_the_goal_with_the_runs_resize(resize, size):
    """A 48 x 36 goal becomes the working image its input would: the square for crop, the whole picture
    for fit (longer side 32) and reference (sides floored to multiples of 8)."""
    from mgie.images import work_size
    from pipeline.evaluation.evaluate import MetricsSpec, MetricsStage

    class NoModels(MetricsSpec):
        def load(self, parts=None):
            return None

    stage = MetricsStage(NoModels(config=None, resolution=32, resize=resize), batch_size=4)
    goal = stage._goal({"goal": _png(48, 36)})
    assert goal.size == size == work_size(48, 36, resize, 32)


def test_eval_passes_the_runs_resize_to_its_metrics(monkeypatch):
    from jobs import eval as eval_job
    from jobs.edit import config_from_args
    from pipeline.evaluation import evaluate

    seen = {}
    monkeypatch.setattr(evaluate, "eval_extension", lambda *a, **k: seen.update(k))
    args = cli.build_parser().parse_args(
        [
            "eval",
            "--input",
            "in.tar",
            "--output",
            "out",
            "--model",
            "noop",
            "--resize",
            "fit",
            "--resolution",
            "32",
            "--metric-models",
            "tiny",
        ]
    )
    eval_job._extension(args, config_from_args(args))
    assert seen["resize"] == "fit"


# ------------------------------------------------------------------ 4. refusals apart from faults of the job


def test_a_fault_in_the_driver_exits_1_naming_the_log_with_its_traceback(tmp_path, monkeypatch, no_ray, capsys):
    """A ValueError raised by a stage or the driver is no bad setting: exit 1, one line, the log file."""
    from pipeline import run

    def broken(*a, **k):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(run, "stream_units", broken)
    shard = _photos_tar(tmp_path / "photos.tar")
    rc = cli.main(["edit", "--input", str(shard), "--output", str(tmp_path / "out"), *CPU])
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("mgie-batch edit:") and "logs go to" not in line]
    assert rc == 1 and len(ours) == 1, err
    assert "ValueError: an internal invariant broke" in ours[0] and "Traceback" not in err
    log = Path(ours[0].rsplit("the traceback is in ", 1)[1])
    assert log.parent == tmp_path / "out" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text


def test_settings_checks_turn_value_errors_into_refusals():
    from pipeline.refusals import BadSetting, NotFound, checking

    with pytest.raises(BadSetting, match="--resolution must be"):
        with checking():
            raise ValueError("--resolution must be a positive multiple of 8")
    with pytest.raises(NotFound, match="model path"):
        with checking():
            raise FileNotFoundError("model path /nope not found")


def test_a_refusal_raised_in_a_task_is_shown_as_its_own_first_line():
    """Ray hands the driver a RayTaskError that is also the task's exception class, its `cause` the original
    with Ray's retry advice appended; the refusal's own line is what the user sees."""
    from pipeline import refusals
    from pipeline.shards import InputShardChanged

    cause = InputShardChanged("the shard is 10 bytes now, 12 when the run was planned\nFailed to apply UDF")

    class TaskError(InputShardChanged):
        def __init__(self):
            super().__init__("ray::ReadShard() (pid=1)\n  File ...\n" + str(cause))
            self.cause = cause

    error = TaskError()
    refusal = refusals.refusal_of(error)
    assert refusal is cause
    assert (
        refusals.message(refusal, from_task=True) == "refused: the shard is 10 bytes now, 12 when the run was planned"
    )
    assert refusals.refusal_of(RuntimeError("a fault")) is None


def test_every_refusal_of_the_plan_is_a_refused():
    from pipeline.lease import LeaseHeld, LeaseLost
    from pipeline.ledger import RunConfigMismatch
    from pipeline.preflight import StorageProblem
    from pipeline.refusals import Refused
    from pipeline.shard_identity import InputShardRewritten
    from pipeline.shards import InputShardChanged
    from pipeline.storage import OutputInsideInput

    for cls in (
        LeaseHeld,
        LeaseLost,
        RunConfigMismatch,
        StorageProblem,
        InputShardRewritten,
        InputShardChanged,
        OutputInsideInput,
    ):
        assert issubclass(cls, Refused), cls


# -------------------------------------------------------------------- 5. the GPUs each preset requests


# preset -> GPUs up -> (express actors, edit actors, GPUs requested)
PRESET_REQUESTS = {
    "cpu": {1: (1, 1, 0), 2: (1, 1, 0), 8: (1, 1, 0)},
    "24gb-per-gpu": {1: (1, 1, 1), 2: (2, 2, 2), 8: (8, 8, 8)},
    "40gb-per-gpu": {1: (1, 1, 1), 2: (2, 2, 2), 8: (8, 8, 8)},
    "80gb-per-gpu": {1: (1, 2, 1), 2: (2, 4, 2), 8: (8, 16, 8)},
    # one 8-GPU node: its eight GPUs whatever is up (the actors wait for the node, docs/deploy.md)
    "8x-h100": {1: (2, 6, 8), 2: (2, 6, 8), 8: (2, 6, 8)},
}


@pytest.mark.parametrize("gpus", [1, 2, 8])
@pytest.mark.parametrize("preset", list(PRESET_REQUESTS))
def test_the_actors_and_gpus_each_preset_requests(preset, gpus):
    from pipeline.config import RESOURCE_PRESETS, pick_resources

    assert set(PRESET_REQUESTS) == set(RESOURCE_PRESETS)
    res = pick_resources(preset, gpus)
    requested = res.express.actors * res.express.num_gpus + res.edit.actors * res.edit.num_gpus
    assert (res.express.actors, res.edit.actors, round(requested, 6)) == PRESET_REQUESTS[preset][gpus]
    fused = res.with_overrides("fused").fused() if requested else None
    if fused is not None:  # the fused layout regroups the same GPUs as whole-GPU actors
        assert fused.actors * fused.num_gpus == pytest.approx(requested)


# ---------------------------------------------------------------------- 6. --help shows the job's defaults


@pytest.mark.parametrize("job", ["eval", "make-dataset"])
def test_help_shows_the_defaults_the_job_uses(job):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[job]
    args = parser.parse_args([job, "--input", "in.tar", "--output", "out"])
    expected = {"resize": "crop", "output_size": "work", "image_format": "png"}
    assert {k: getattr(args, k) for k in expected} == expected
    helps = {a.dest: " ".join(a.help.split()) for a in sub._actions if a.dest in expected}
    for dest, value in expected.items():
        assert helps[dest].endswith(f"(default: {value})"), (dest, helps[dest])
    edit = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["edit"]
    edit_helps = {a.dest: " ".join(a.help.split()) for a in edit._actions if a.dest in expected}
    assert edit_helps["resize"].endswith("(default: fit)")
    assert edit_helps["image_format"].endswith("(default: the input's: JPEG in, JPEG out)")
