"""The shipped mgie-tiny (models/mgie-tiny, trained by `make train-tiny`) really edits: on held-out photos that
training never saw, at their own size, through `mgie-batch edit` with its default full-size output, every edit
kind its eval.json claims moves the photo the right way, lands >= 30 % closer to the procedural goal than the
unedited photo, and its expressive text names the edit (pipeline.evaluation.full_size_checks). Held-out
phrasings only: no instruction here appears in a training row."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from jobs import cli
from mgie.model import MGIE
from pipeline.evaluation.full_size_checks import TONE_AND_COLOUR, full_size_rows, judge_output, write_inputs
from pipeline.training.phrasings import check_disjoint, draw, training_phrasings
from pipeline.training.procedural import EDITS, EDITS_BY_NAME

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mgie-tiny"
EVAL = json.loads((MODEL / "eval.json").read_text())
CLAIMED = EVAL["runs"][0]["passed"]


def test_the_shipped_evaluation_is_on_held_out_photos_and_phrasings():
    # the shipped model passes 3 of the 10 tone and colour kinds on held-out photos and phrasings (docs/training.md):
    # short of the 8 aimed at; whatever it claims, the test below holds it to
    assert [k for k in CLAIMED if k in TONE_AND_COLOUR], f"models/mgie-tiny/eval.json claims {CLAIMED}"
    assert EVAL["photos"] == "heldout" and EVAL["phrasings"] == "held-out"


def test_held_out_and_validation_phrasings_never_appear_in_training():
    for edit in EDITS:
        assert len(edit.phrasings) >= 8 and len(edit.held_out_phrasings) >= 3, edit.name
        assert len(edit.validation_phrasings) >= 3, edit.name
        assert not set(edit.phrasings) & set(edit.unseen_phrasings), edit.name
        # nor inside what a training row is given, in any frame or with another noun for the photo
        rng = random.Random(edit.name)
        drawn = {draw(edit.name, edit.phrasings, edit.unseen_phrasings, rng) for _ in range(3000)}
        assert len(drawn) > 50, edit.name  # the frames and attribute words are used
        check_disjoint(drawn, edit.held_out_phrasings)
        check_disjoint(drawn, edit.validation_phrasings)


def test_validation_phrasings_are_new_wordings_that_left_the_training_rows_as_they_were():
    for edit in EDITS:
        # choosing on the validation split never reads a held-out wording, in either direction
        check_disjoint(edit.validation_phrasings, edit.held_out_phrasings)
        check_disjoint(edit.held_out_phrasings, edit.validation_phrasings)
        # no composed training phrasing held a validation one when they were added: the models trained before
        # (and their tokenizers' corpora) saw the same rows that a run trained now sees
        before = training_phrasings(edit.name, edit.phrasings, edit.held_out_phrasings)
        assert training_phrasings(edit.name, edit.phrasings, edit.unseen_phrasings) == before, edit.name


def test_the_full_size_checks_say_each_split_its_own_phrasings():
    for split, field in (("held-out", "held_out_phrasings"), ("validation", "validation_phrasings")):
        rows = full_size_rows("train", crops=1, seed=7, phrasings=split, kinds=("brighten", "sepia"))
        for row in rows:
            assert row["instruction"] in getattr(EDITS_BY_NAME[row["kind"]], field), (split, row["instruction"])
    with pytest.raises(ValueError, match="phrasings 'composed'"):
        full_size_rows("train", crops=1, seed=7, phrasings="composed", kinds=("brighten",))


def test_a_held_out_phrasing_in_a_frame_or_with_another_noun_is_caught_and_never_drawn():
    held_out = ("raise the contrast in the picture",)
    with pytest.raises(AssertionError, match="holds held-out"):
        check_disjoint(["Please raise the contrast in this shot!"], held_out)
    own = ("raise the contrast in the photo", "add contrast")
    kept = training_phrasings("contrast", own, held_out)
    assert "add contrast" in kept and not [p for p in kept if "contrast in" in p]


def test_mgie_tiny_by_name_is_the_shipped_weights():
    model = MGIE.from_pretrained("mgie-tiny", dtype=torch.float32)
    shipped = json.loads((MODEL / "weights.json").read_text())["fingerprint"]
    assert model.fingerprint() == shipped
    init = MGIE.from_preset("mgie-tiny-init", seed=0)
    assert not torch.equal(next(model.unet.parameters()), next(init.unet.parameters()))
    assert sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file()) < 25e6  # committed: small


def test_claimed_kinds_pass_on_held_out_photos_through_the_product(tmp_path, ray_local):
    # the committed evaluation's own draw (photos, crops, strengths, phrasings), its claimed kinds only
    rows = full_size_rows("heldout", EVAL["crops"], EVAL["seed"], phrasings="held-out", kinds=tuple(CLAIMED))
    inputs = write_inputs(rows, str(tmp_path / "in"))
    assert (
        cli.main(
            [
                "edit",
                "--model",
                "mgie-tiny",
                "--input",
                inputs,
                "--output",
                str(tmp_path / "out"),
                "--no-progress",
                "--resources",
                "cpu",
            ]
        )
        == 0
    )
    report = judge_output(rows, str(tmp_path / "out"))
    assert report["missing_rows"] == 0 and min(report["sizes"]["smallest"]) >= 256
    failed = {k: v["failures"] for k, v in report["kinds"].items() if not v["passed"]}
    assert not failed, f"claimed kinds that fail on held-out photos: {failed}"
    assert sorted(report["kinds"]) == sorted(CLAIMED)


def test_the_demo_says_what_the_shipped_model_passes():
    from jobs.demo import model_note

    note = model_note("mgie-tiny")
    assert f"the check of {len(CLAIMED)} kind" in note and all(kind in note for kind in CLAIMED), note
