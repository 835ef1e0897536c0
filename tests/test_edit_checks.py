"""pipeline.evaluation.edit_checks: each kind's direction check passes a real edit of that kind and fails the
identity."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.edit_checks import CHECKS, judge
from pipeline.training.photo_sets import PHOTO_SETS, iter_photo_set
from pipeline.training.procedural import EDITS_BY_NAME


@pytest.fixture(scope="module")
def photos():
    return [
        Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64)) for _, data in iter_photo_set("builtin:heldout:3")
    ]


def _arr(img):
    return np.asarray(img, np.float32) / 255.0


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_the_procedural_edit_passes_and_the_identity_fails(photos, kind):
    edit = EDITS_BY_NAME[kind]
    strength = sum(edit.strength) / 2
    inputs = [_arr(p) for p in photos]
    goals = [_arr(edit.apply(p, strength)) for p in photos]
    named = [edit.expressive] * len(photos)
    # the goal itself as the model's output: right way, L1 0, the expressive text names it
    assert judge(kind, inputs, goals, goals, named).passed
    same = judge(kind, inputs, inputs, goals, named)  # an edit that changes nothing
    assert not same.passed and same.l1_ratio == pytest.approx(1.0)
    unnamed = judge(kind, inputs, goals, goals, ["The photo is edited."] * len(photos))
    assert not unnamed.passed and unnamed.failures == ["0% of texts name the edit (< 80%)"]


def test_photo_sets_are_disjoint_and_seeded():
    assert not set(PHOTO_SETS["train"]) & set(PHOTO_SETS["heldout"])
    first = list(iter_photo_set("builtin:heldout:2"))
    assert [k for k, _ in first] == ["chelsea-000", "chelsea-001", "rocket-000", "rocket-001"]
    assert first == list(iter_photo_set("builtin:heldout:2"))
    with pytest.raises(ValueError, match="unknown photo set"):
        list(iter_photo_set("builtin:holiday"))
