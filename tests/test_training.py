"""Training: the objective's switches (which parameters learn), procedural triplets, and `mgie-batch train` on
Ray Train with CPU workers: the loss falls, checkpoints load with MGIE.from_pretrained, a crashed run resumes
on the same loss curve."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import cli
from mgie.model import MGIE
from mgie.summarizer import express_with_text
from mgie.training import MGIETrainModule, ObjectiveConfig, apply_head, build_batch, cfg_dropout
from pipeline.procedural import EDITS, EDITS_BY_NAME
from pipeline.shards import read_members

RES = 32


def _photos(folder: str, names=("astronaut", "coffee")) -> str:
    import skimage.data

    os.makedirs(folder, exist_ok=True)
    for name in names:
        Image.fromarray(getattr(skimage.data, name)()).save(f"{folder}/{name}.png")
    return folder


def _group(name: str) -> str:
    """Parameter name -> the component group the reference's trainable/frozen split speaks of."""
    if name.startswith("llm.model.embed_tokens"):
        return "embed_tokens"
    if name.startswith("llm.lm_head"):
        return "lm_head"
    if name.startswith("llm."):
        return "llama_blocks"
    return name.split(".")[0]  # vision (CLIP + projector), edit_head, unet, vae


@pytest.fixture(scope="module")
def tiny():
    model = MGIE.from_preset("tiny", seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)) for _ in range(4)]
    return model, images[:2], images[2:]


def _grads(model, inputs, goals, objective: ObjectiveConfig, seed: int = 0):
    module = MGIETrainModule(model, objective)
    for p in module.parameters():
        p.grad = None
    batch = build_batch(model, inputs, goals, ["make it brighter", "add snow"],
                        ["The photo is brighter.", "Snow covers the ground."], lgie=objective.lgie)
    out = module(batch, torch.Generator().manual_seed(seed))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return module, out, grads


@pytest.mark.parametrize("switches, learns", [
    ({}, {"embed_tokens", "lm_head", "edit_head", "unet"}),
    ({"mode": "ft"}, {"embed_tokens", "lm_head", "edit_head", "unet"}),
    ({"mode": "fz"}, {"edit_head", "unet"}),
    ({"ins_loss": False}, {"embed_tokens", "edit_head", "unet"}),
    ({"mode": "ft", "ins_loss": False}, {"edit_head", "unet"}),
    ({"lgie": True}, {"embed_tokens", "lm_head", "edit_head", "unet"}),
])
def test_switches_decide_which_parameters_receive_gradients(tiny, switches, learns):
    model, inputs, goals = tiny
    _, out, grads = _grads(model, inputs, goals, ObjectiveConfig(**switches))
    nonzero = {_group(n) for n, g in grads.items() if g.abs().sum() > 0}
    assert nonzero == learns  # LLaMA blocks, CLIP, the projector and the VAE never learn
    assert {_group(n) for n in grads} == learns  # and frozen ones hold no gradient at all
    trained_ins = switches.get("ins_loss", True) and switches.get("mode", "e2e") != "fz"
    expected = 0.5 * out.edit + (out.ins if trained_ins else 0.0)
    assert torch.allclose(out.loss.detach(), torch.as_tensor(expected), atol=1e-6)


def test_ft_stops_the_edit_loss_at_the_edit_head_and_e2e_does_not(tiny):
    """FT: embed_tokens' gradient is that of L_ins alone; E2E: the edit loss adds to it."""
    model, inputs, goals = tiny
    embed = "llm.model.embed_tokens.weight"
    ft = _grads(model, inputs, goals, ObjectiveConfig(mode="ft"))[2][embed]
    ft_ins_only = _grads(model, inputs, goals, ObjectiveConfig(mode="ft", edit_weight=0.0))[2][embed]
    e2e = _grads(model, inputs, goals, ObjectiveConfig(mode="e2e"))[2][embed]
    e2e_ins_only = _grads(model, inputs, goals, ObjectiveConfig(mode="e2e", edit_weight=0.0))[2][embed]
    assert torch.equal(ft, ft_ins_only)
    assert not torch.allclose(e2e, e2e_ins_only)
    img_rows = model.config.tokens.img_ids
    assert not torch.allclose(e2e[img_rows], e2e_ins_only[img_rows])


def test_lgie_runs_no_vision_and_puts_no_image_tokens_in_the_prompt(tiny):
    model, inputs, goals = tiny
    calls = []
    hook = model.vision.register_forward_hook(lambda *a: calls.append(1))
    try:
        _grads(model, inputs, goals, ObjectiveConfig(lgie=True))
        assert calls == []
        _grads(model, inputs, goals, ObjectiveConfig())
        assert calls == [1]
    finally:
        hook.remove()
    plain = build_batch(model, inputs, goals, ["a", "b"], ["x", "y"])
    lgie = build_batch(model, inputs, goals, ["a", "b"], ["x", "y"], lgie=True)
    patch = model.config.tokens.im_patch_id
    assert (plain.input_ids == patch).sum(1).tolist() == [model.config.vision.num_patches] * 2
    assert (lgie.input_ids == patch).sum() == 0 and lgie.clip_pixels is None


def test_teacher_forced_conditioning_is_the_inference_conditioning(tiny):
    """The states training conditions on are those inference uses for the same text (express_with_text,
    left-padded): the right-padded gather picks the states that predict [IMG0..7]."""
    model, inputs, goals = tiny
    texts = ["The photo is brighter.", "Snow covers the whole ground now."]  # different lengths: padding
    module = MGIETrainModule(model, ObjectiveConfig())
    batch = build_batch(model, inputs, goals, ["make it brighter", "add snow"], texts)
    with torch.no_grad():
        _, states, rows = module.teacher_forced(batch)
        train_cond = apply_head(model.edit_head, states, rows)
        infer_cond = express_with_text(model, inputs, ["make it brighter", "add snow"], texts).conditioning
    assert torch.allclose(train_cond, infer_cond, atol=1e-5)
    labels = batch.labels[0][batch.labels[0] != -100].tolist()
    assert labels[-8:] == model.config.tokens.img_ids  # the assistant turn ends with the 8 [IMG] tokens


def test_guidance_dropout_bands():
    null_text, null_image = cfg_dropout(torch.tensor([0.01, 0.07, 0.12, 0.5]), ObjectiveConfig())
    assert null_text.tolist() == [True, True, False, False]
    assert null_image.tolist() == [False, True, True, False]


# ---------------------------------------------------------------------------------------- procedural data


def test_procedural_triplets_are_known_edits_and_deterministic(tmp_path):
    photos = _photos(str(tmp_path / "photos"), ("astronaut",))
    args = ["make-dataset", "--procedural", "--input", photos, "--resolution", "48", "--edits-per-image", "0",
            "--unit-rows", "5"]
    assert cli.main([*args, "--output", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--output", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["rows"] == len(EDITS) >= 10 and len(manifest["shards"]) == 3
    members = {}
    for rel in manifest["shards"]:
        data = (tmp_path / "a" / rel).read_bytes()
        assert data == (tmp_path / "b" / rel).read_bytes()  # same photos and seed: the same bytes
        members.update(read_members(data))
    for edit in EDITS:
        assert len(edit.phrasings) >= 3
        record = json.loads(members[f"astronaut-{edit.name}.json"])
        assert record["instruction"] in edit.phrasings and record["summary"] == edit.expressive
    arr = {e.name: np.asarray(Image.open(io.BytesIO(members[f"astronaut-{e.name}.goal.png"])), dtype=np.float32)
           for e in EDITS}
    src = np.asarray(Image.open(io.BytesIO(members["astronaut-brighten.input.png"])), dtype=np.float32)
    assert src.shape == (48, 48, 3)
    assert arr["brighten"].mean() > src.mean() + 10 > arr["darken"].mean() + 20
    assert arr["contrast"].std() > src.std() and np.abs(np.diff(arr["blur"], axis=1)).mean() < np.abs(
        np.diff(src, axis=1)).mean() < np.abs(np.diff(arr["sharpen"], axis=1)).mean()
    gray = arr["grayscale"]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert np.allclose(arr["invert"], 255 - src)
    assert (arr["warmer"][..., 0] - arr["warmer"][..., 2]).mean() > (src[..., 0] - src[..., 2]).mean()
    assert (arr["cooler"][..., 0] - arr["cooler"][..., 2]).mean() < (src[..., 0] - src[..., 2]).mean()
    corner, centre = (slice(0, 6), slice(0, 6)), (slice(21, 27), slice(21, 27))
    assert arr["vignette"][corner].mean() / src[corner].mean() < arr["vignette"][centre].mean() / src[centre].mean()
    assert set(EDITS_BY_NAME) >= {"brighten", "darken", "contrast", "saturate", "grayscale", "sepia", "warmer",
                                  "cooler", "invert", "blur", "sharpen", "vignette"}
