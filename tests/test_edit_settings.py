"""The settings a small trained model edits with: the sampler's strength (img2img start), the detail reference
of a full-size output (the VAE's round trip), their place in the run identity, and the full-size held-out
checks that judge them."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mgie.config import check_detail_reference, check_strength
from mgie.model import MGIE
from pipeline.evaluation.full_size_checks import full_size_crops, full_size_rows, judge_output
from pipeline.identity import SamplerSettings
from pipeline.outputs import transfer_edit
from pipeline.shards import write_samples
from pipeline.training.procedural import EDITS_BY_NAME


@pytest.fixture(scope="module")
def tiny():
    return MGIE.from_preset("tiny", seed=0)


def _photo(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_strength_one_is_the_reference_sampling_and_below_one_starts_from_the_photo(tiny):
    img = _photo()
    cond = tiny.express([img], ["make it brighter"]).conditioning
    default = tiny.sample([img], cond, [5], num_inference_steps=4, output_type="np")
    full = tiny.sample([img], cond, [5], num_inference_steps=4, output_type="np", strength=1.0)
    half = tiny.sample([img], cond, [5], num_inference_steps=4, output_type="np", strength=0.5)
    again = tiny.sample([img], cond, [5], num_inference_steps=4, output_type="np", strength=0.5)
    assert np.array_equal(default, full)
    assert not np.allclose(full, half) and np.array_equal(half, again)  # a seed still gives the same pixels
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="strength must lie in"):
            check_strength(bad)


def test_strength_below_one_keeps_a_model_near_the_photo(tiny):
    """With few of the schedule's last steps to run, a random model has little room to move away from the
    photo's own latent: the output is nearer the VAE's round trip of the photo than a sample from noise is."""
    img = _photo(seed=3)
    cond = tiny.express([img], ["x"]).conditioning
    recon = np.asarray(tiny.reconstruct([img])[0], np.float32) / 255
    far = tiny.sample([img], cond, [1], num_inference_steps=8, output_type="np")[0]
    near = tiny.sample([img], cond, [1], num_inference_steps=8, output_type="np", strength=0.15)[0]
    assert np.abs(near - recon).mean() < np.abs(far - recon).mean()


def test_reconstruct_is_the_vae_round_trip(tiny):
    img = _photo()
    out = tiny.reconstruct([img])[0]
    assert out.size == img.size
    pixels = torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = tiny.vae.decode(tiny.vae.encode(pixels).latent_dist.mode()).sample
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().squeeze(0).permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.abs(np.asarray(out).astype(int) - expected.astype(int)).max() <= 1


def test_sample_and_reconstruct_gives_both_with_one_encode(tiny, monkeypatch):
    imgs = [_photo(seed=1), _photo(seed=2)]
    cond = tiny.express(imgs, ["make it brighter", "make it darker"]).conditioning
    edited = tiny.sample(imgs, cond, [4, 5], num_inference_steps=3)
    round_trips = tiny.reconstruct(imgs)
    calls = []
    encode = tiny.vae.encode
    monkeypatch.setattr(tiny.vae, "encode", lambda x: calls.append(x.shape) or encode(x))
    both = tiny.sample_and_reconstruct(imgs, cond, [4, 5], num_inference_steps=3)
    assert calls == [(2, 3, 32, 32)]  # the sampler's latents are the round trip's
    for got, want in zip(both[0] + both[1], edited + round_trips):
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_against_the_reconstruction_an_unchanged_region_is_the_photo_itself():
    """The detail is added against the VAE's round trip: where the model's output equals that round trip (no
    edit), the full-size output is the photo, with none of the VAE's blur or colour error."""
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    recon = np.asarray(Image.fromarray(full).resize((24, 24), Image.Resampling.BOX), np.int16)
    recon = np.clip(recon + rng.integers(-12, 13, recon.shape), 0, 255).astype(np.uint8)  # the VAE's error
    out = transfer_edit(full, recon, recon.copy())
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 1.0
    brighter = np.clip(recon.astype(int) + 30, 0, 255).astype(np.uint8)  # a global edit on top of that error
    shifted = transfer_edit(full, recon, brighter).astype(int) - full.astype(int)
    assert 25 < shifted.mean() < 31


def test_the_new_settings_leave_older_runs_identity_alone():
    plain = SamplerSettings(20, 1.0, 1.0, 64)
    assert "strength" not in plain.to_dict() and "detail_reference" not in plain.to_dict()
    chosen = SamplerSettings(20, 1.0, 1.0, 64, strength=0.7, detail_reference="reconstruction")
    assert chosen.to_dict()["strength"] == 0.7 and chosen.to_dict()["detail_reference"] == "reconstruction"
    with pytest.raises(ValueError, match="--detail-reference must be one of input, reconstruction"):
        check_detail_reference("vae")


def _output_of(rows, folder, pick):
    """A webdataset-format output as `mgie-batch edit` leaves it: shards/*.tar with <key>.png + <key>.json."""
    import json

    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    samples = []
    for r in rows:
        buf = io.BytesIO()
        pick(r).save(buf, format="PNG")
        text = EDITS_BY_NAME[r["kind"]].expressive  # what a model that learned the edit says
        samples.append(
            (r["key"], {"png": buf.getvalue(), "json": json.dumps({"expressive_instruction": text}).encode()})
        )
    with open(os.path.join(folder, "shards", "u0.tar"), "wb") as f:
        f.write(write_samples(samples))
    return folder


def test_full_size_checks_pass_the_goal_and_fail_the_unedited_photo(tmp_path):
    rows = full_size_rows("heldout", crops=1, seed=1, kinds=("brighten", "darken", "invert", "warmer"))
    assert all(min(r["input"].size) >= 256 and r["goal"].size == r["input"].size for r in rows)
    assert len({r["input"].size for r in rows}) >= 2  # the photos keep their own sizes and aspects
    goal = judge_output(rows, _output_of(rows, str(tmp_path / "goal"), lambda r: r["goal"]))
    assert goal["passed"] == ["brighten", "darken", "invert", "warmer"] and goal["missing_rows"] == 0
    unedited = judge_output(rows, _output_of(rows, str(tmp_path / "same"), lambda r: r["input"]))
    assert unedited["passed"] == []
    missing = judge_output(rows, str(tmp_path / "nothing"))  # error rows count as unedited, never skipped
    assert missing["missing_rows"] == len(rows) and missing["passed"] == []
    first, again = full_size_crops("heldout", crops=2, seed=2), full_size_crops("heldout", crops=2, seed=2)
    assert [(k, img.size) for k, img in first] == [(k, img.size) for k, img in again]  # seeded
