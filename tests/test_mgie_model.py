"""The mgie library on the tiny preset: sampler parity with diffusers, batching, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mgie import MGIE, preprocess_image

RES = 32


def _images(n: int, seed: int = 0, size=(40, 52)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def model() -> MGIE:
    return MGIE.from_preset("tiny", seed=0)


@pytest.fixture(scope="module")
def work_images() -> list[Image.Image]:
    return [preprocess_image(img, RES) for img in _images(3)]


def test_sampler_matches_diffusers_instruct_pix2pix(model, work_images):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from mgie.sampler import build_scheduler

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae,
        text_encoder=None,
        tokenizer=None,
        unet=model.unet,
        scheduler=build_scheduler(model.config.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    image = work_images[0]
    cond = model.express([image], ["make it more healthy"]).conditioning  # (1, 77, 32)
    null = model.null_conditioning()
    seed, steps = 1234, 5
    ref = pipe(
        image=image,
        prompt_embeds=cond,
        negative_prompt_embeds=null,
        num_inference_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images  # (1, H, W, 3) in [0, 1]
    ours = model.sample([image], cond, seeds=[seed], num_inference_steps=steps, output_type="np")
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5


def test_batch_of_three_equals_three_single_edits(model):
    images = _images(3, seed=1)
    instructions = ["brighten it", "add a red hat to the cat", "make it winter"]
    seeds = [11, 22, 33]
    batch = model.edit(images, instructions, seeds=seeds, num_inference_steps=3)
    work = [preprocess_image(img, model.config.sampler.resolution) for img in images]
    expressed = model.express(work, instructions)
    batch_px = model.sample(work, expressed.conditioning, seeds, 3, output_type="np")  # (3, H, W, 3) in [0, 1]
    for i in range(3):
        single = model.edit([images[i]], [instructions[i]], seeds=[seeds[i]], num_inference_steps=3)
        assert single.expressive_instructions[0] == batch.expressive_instructions[i]
        assert batch.expressive_instructions[i] == expressed.texts[i]
        # compared before 8-bit rounding: the left-padded MLLM batch moves the conditioning by ~1e-7, which
        # can flip a pixel that sits on a rounding boundary by one level
        one = model.express([work[i]], [instructions[i]])
        single_px = model.sample([work[i]], one.conditioning, [seeds[i]], 3, output_type="np")[0]
        diff = np.abs(single_px - batch_px[i])
        assert diff.max() <= 1e-5, f"row {i}: batch differs from single edit by {diff.max()}"


def test_sampler_batch_equals_single_in_float(model, work_images):
    cond = model.express(work_images, ["a", "b", "c"]).conditioning
    batch = model.sample(work_images, cond, seeds=[5, 6, 7], num_inference_steps=3, output_type="np")
    for i in range(3):
        single = model.sample([work_images[i]], cond[i : i + 1], seeds=[5 + i], num_inference_steps=3, output_type="np")
        assert np.abs(single[0] - batch[i]).max() <= 1e-5


def test_same_seed_same_pixels_other_seed_other_pixels(model):
    images, text = _images(1, seed=2), ["add fireworks"]
    a = model.edit(images, text, seeds=[7], num_inference_steps=3).images[0]
    b = model.edit(images, text, seeds=[7], num_inference_steps=3).images[0]
    c = model.edit(images, text, seeds=[8], num_inference_steps=3).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_preset_weights_do_not_depend_on_parts():
    full = MGIE.from_preset("tiny", seed=3)
    express = MGIE.from_preset("tiny", seed=3, parts={"express"})
    edit = MGIE.from_preset("tiny", seed=3, parts={"edit"})
    assert express.unet is None and edit.llm is None
    for name, tensor in full.llm.state_dict().items():
        assert torch.equal(tensor, express.llm.state_dict()[name]), name
    for name, tensor in full.unet.state_dict().items():
        assert torch.equal(tensor, edit.unet.state_dict()[name]), name
    assert torch.equal(full.null_conditioning(), edit.null_conditioning())
    assert full.fingerprint() == express.fingerprint() == edit.fingerprint()
    assert MGIE.from_preset("tiny", seed=4).fingerprint() != full.fingerprint()


def test_express_and_edit_parts_compose_to_a_full_edit():
    images, text, seeds = _images(2, seed=5), ["make it sunny", "more contrast"], [1, 2]
    full = MGIE.from_preset("tiny", seed=0).edit(images, text, seeds=seeds, num_inference_steps=2)
    express = MGIE.from_preset("tiny", seed=0, parts={"express"})
    edit = MGIE.from_preset("tiny", seed=0, parts={"edit"})
    work = [preprocess_image(i, RES) for i in images]
    expr = express.express(work, text)
    out = edit.sample(work, expr.conditioning, seeds=seeds, num_inference_steps=2)
    for a, b in zip(full.images, out):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(RuntimeError, match="'edit' is needed"):
        express.sample(work, expr.conditioning)


def test_expressive_instruction_and_conditioning_shapes(model, work_images):
    expr = model.express(work_images, ["make it more healthy", "x", "a much longer instruction about the sky"])
    assert expr.conditioning.shape == (3, 77, 32)
    assert len(expr.texts) == 3 and all(isinstance(t, str) for t in expr.texts)
    assert expr.truncated == [False, False, False]


def test_long_instruction_is_truncated_and_flagged(model, work_images):
    long = "make it brighter " * 200
    expr = model.express(work_images[:1], [long])
    assert expr.truncated == [True]
    assert expr.conditioning.shape == (1, 77, 32)


@pytest.mark.parametrize(
    "images, instructions, error, match",
    [
        ("not a list", ["x"], TypeError, "images must be a list"),
        ([], [], ValueError, "images is empty"),
        ([np.zeros((4, 4, 3))], ["x"], TypeError, r"images\[0\] must be a PIL"),
        ([Image.new("L", (8, 8))], ["x"], ValueError, r"images\[0\] has mode 'L'"),
        ([Image.new("RGBA", (8, 8))], ["x"], ValueError, "has mode 'RGBA'"),
        ([Image.new("RGB", (8, 8))] * 2, ["x"], ValueError, "instructions has 1 entries but there are 2"),
        ([Image.new("RGB", (8, 8))], "x", TypeError, "instructions must be a list"),
        ([Image.new("RGB", (8, 8))], [3], TypeError, r"instructions\[0\] must be str"),
        ([Image.new("RGB", (8, 8))], ["   "], ValueError, r"instructions\[0\] is empty"),
    ],
)
def test_bad_arguments_are_named(model, images, instructions, error, match):
    with pytest.raises(error, match=match):
        model.edit(images, instructions)


def test_sample_checks_seeds_and_conditioning(model, work_images):
    cond = torch.zeros(2, 77, 32)
    with pytest.raises(ValueError, match="conditioning must be a tensor"):
        model.sample(work_images[:1], cond)
    with pytest.raises(ValueError, match="seeds has 3 entries"):
        model.sample(work_images[:2], cond, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="not divisible by 2"):
        model.sample([Image.new("RGB", (33, 33))], cond[:1])


def test_unet_channels_must_match_the_vae_latents():
    import dataclasses

    from mgie.config import preset

    tiny16 = preset("mgie-tiny-init")
    assert (tiny16.vae.latent_channels, tiny16.unet.in_channels, tiny16.unet.out_channels) == (16, 32, 16)
    with pytest.raises(ValueError, match="unet in/out channels 8/4 must be 32/16"):
        tiny16.replace(unet=dataclasses.replace(tiny16.unet, in_channels=8, out_channels=4))
