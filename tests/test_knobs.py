"""Run knobs: --concurrency and --num-gpus over the resources preset, --scheduler (fingerprinted), --dry-run."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import RESOURCE_PRESETS, EditConfig
from pipeline.editors import SCHEDULER_NAMES, ModelSpec
from pipeline.identity import run_identity


def test_concurrency_and_num_gpus_override_the_preset_in_both_layouts():
    preset = RESOURCE_PRESETS["80gb-per-gpu"]
    split = preset.with_overrides("split", concurrency=3, num_gpus=0.5)
    assert (split.express.actors, split.edit.actors) == (3, 3)
    assert (split.express.num_gpus, split.edit.num_gpus) == (0.5, 0.5)
    assert split.edit.batch_size == preset.edit.batch_size  # untouched
    fused = preset.with_overrides("fused", concurrency=2, num_gpus=1)
    assert (fused.fused().actors, fused.fused().num_gpus) == (2, 1)
    assert preset.with_overrides("fused").fused().actors == 1  # without overrides: regrouped as before
    assert RESOURCE_PRESETS["cpu"].with_overrides("auto", num_gpus=1).layout == "fused"  # GPUs asked for
    with pytest.raises(ValueError, match="--concurrency must be >= 1"):
        EditConfig.of(input="x", output="y", concurrency=0)


def test_scheduler_names_match_the_library_and_the_choice_is_part_of_the_fingerprint():
    from mgie.sampler import SCHEDULERS

    assert SCHEDULER_NAMES == tuple(sorted(SCHEDULERS))
    model = {"fingerprint": "f", "name": "tiny", "config": {"prompt": {}, "generation": {}}}

    def identity(scheduler: str) -> dict:
        cfg = EditConfig.of(input="x", output="y", model=ModelSpec("tiny", scheduler=scheduler))
        return run_identity(cfg, model, _Sampler(), 1)

    assert "scheduler" not in identity("")  # runs from before the flag keep their fingerprint
    assert identity("ddim")["scheduler"] == "ddim" and identity("ddim") != identity("euler")


class _Sampler:
    def to_dict(self):
        return {"num_inference_steps": 4}


def test_scheduler_reaches_the_loaded_sampler():
    model = ModelSpec("tiny", scheduler="ddim", device="cpu").load({"edit"})
    assert model._sampler.scheduler_cfg.name == "ddim" and model.config.scheduler.name == "ddim"
    assert ModelSpec("tiny", device="cpu").load({"edit"})._sampler.scheduler_cfg.name == "euler_ancestral"


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_touches_nothing(s3, ray_local, capsys):
    from jobs import cli
    from pipeline.run import run_edit

    bucket = s3.new_bucket("dry")
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16, 3), i * 30, np.uint8)).save(buf, "PNG")
        s3.client().put_object(Bucket=bucket, Key=f"photos/p{i}.png", Body=buf.getvalue())
    output = f"s3://{bucket}/out"
    args = [
        "edit",
        "--input",
        f"s3://{bucket}/photos",
        "--output",
        output,
        "--model",
        "noop",
        "--resolution",
        "32",
        "--instruction",
        "x",
        "--unit-rows",
        "2",
        "--resources",
        "cpu",
        "--no-progress",
    ]
    cfg = EditConfig.of(
        input=f"s3://{bucket}/photos",
        output=output,
        model=ModelSpec("noop"),
        resolution=32,
        instruction="x",
        unit_rows=2,
        resources="cpu",
        progress=False,
        limit=2,
    )
    assert run_edit(cfg)["ok"] == 2  # one unit committed
    before = s3.list_keys(bucket)
    capsys.readouterr()

    assert cli.main([*args, "--dry-run", "--concurrency", "3"]) == 0
    text = capsys.readouterr().out
    assert f"output     {output} (existing run: same configuration: resumes)" in text
    assert "rows       6, 2 already done" in text and "sources    1 (1 folder)" in text
    assert "express      3 actor(s) x 0 GPU, batch 4" in text and "edit         3 actor(s)" in text
    assert s3.list_keys(bucket) == before  # nothing written or deleted

    assert cli.main([*args, "--dry-run", "--json", "--steps", "9"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["existing_run"].startswith("DIFFERENT") and plan["rows"] == 6 and plan["rows_done"] == 2


def test_dry_run_finds_the_run_the_driver_recorded_for_a_model_with_numerics(tmp_path):
    """tiny has a precision (device, dtype) in its run identity; the dry run resolves the same identity as
    the driver, so the same command is "same configuration", not "DIFFERENT"."""
    from pipeline.dry_run import make_plan
    from pipeline.identity import resolve_identity
    from pipeline.ledger import ensure_run_record
    from pipeline.storage import Store

    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photos" / "p0.png")
    cfg = EditConfig.of(
        input=str(tmp_path / "photos"),
        output=str(tmp_path / "out"),
        model=ModelSpec("tiny"),
        instruction="x",
        unit_rows=2,
        resources="cpu",
        progress=False,
    )
    run = resolve_identity(cfg, None, lambda: 0)  # as run_edit does it, before it writes run.json
    assert run.precision == {"device": "cpu", "dtype": "float32"}
    ensure_run_record(Store.open(cfg.io.output), run.identity, run.fingerprint, {})

    assert make_plan(cfg, gpus=0).existing_run == "same configuration: resumes"
    changed = dataclasses.replace(cfg, model=ModelSpec("tiny", dtype="bfloat16"))
    assert make_plan(changed, gpus=0).existing_run.startswith("DIFFERENT")
