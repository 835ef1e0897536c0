"""Batched greedy generation and the choice of the [IMG] hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mgie import MGIE
from mgie.generation import greedy_generate, img_window_start
from mgie.images import to_clip_pixels
from mgie.mllm import splice_image_features

IMG0 = 100  # [IMG0]; [IMG1..7] = 101..107 in these hand-made sequences


@pytest.mark.parametrize(
    "generated, continued, expected",
    [
        # [IMG0] mid-sequence followed by all eight [IMG] and EOS: the states predicting them
        ([5, 6, 7, *range(IMG0, IMG0 + 8), 2], False, 3),
        # decoding stopped right after [IMG7]; the reference would have decoded one more token
        ([5, 6, 7, *range(IMG0, IMG0 + 8)], True, 3),
        # [IMG0] too close to the end (cut by max_new_tokens): pulled back so the window fits
        ([5, 6, 7, 8, 9, IMG0, IMG0 + 1], False, 7 - 9),
        # no [IMG0] at all: the 8 states before the last one
        ([5] * 20, False, 11),
        # no [IMG0] and a very short answer: the window reaches back into the prompt
        ([2], False, -8),
    ],
)
def test_img_window_start(generated, continued, expected):
    assert img_window_start(generated, IMG0, 8, continued) == expected


def _inputs(model: MGIE, images, instructions):
    rows = model.prompt_rows(instructions, model.config.prompt.edit_template)
    embeds, mask = model.embed_prompts(images, rows)
    return mask, rows, embeds


def _full_states(model: MGIE, prompt_row: list[int], generated: list[int], image) -> torch.Tensor:
    """Recomputes every last-layer state of prompt + generated in one pass, no cache. -> (T, H)"""
    ids = torch.tensor([prompt_row + generated])
    feats = model.vision(to_clip_pixels([image], model.config.vision))
    embeds = splice_image_features(model.llm.get_input_embeddings()(ids), ids, feats, model.config.tokens.im_patch_id)
    return model.llm.model(inputs_embeds=embeds).last_hidden_state[0]


@pytest.fixture(scope="module")
def model():
    # seed 5: a tiny random LLM whose greedy answers differ between these prompts (rows stop at different steps)
    return MGIE.from_preset("tiny", seed=5, parts={"express"})


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]


INSTRUCTIONS = ["make it more healthy", "add snow", "replace the sky with a dramatic purple sunset please"]


@torch.no_grad()
def test_batched_generation_equals_single_rows(model, images):
    mask, rows, embeds = _inputs(model, images, INSTRUCTIONS)
    kw = dict(
        max_new_tokens=12, no_repeat_ngram_size=3, eos_id=2, img_first_id=model.config.tokens.img_first_id, num_img=8
    )
    batch = greedy_generate(model.llm, embeds, mask, rows, **kw)
    for i in range(3):
        m1, r1, e1 = _inputs(model, images[i : i + 1], INSTRUCTIONS[i : i + 1])
        single = greedy_generate(model.llm, e1, m1, r1, **kw)
        assert single.token_ids[0] == batch.token_ids[i]
        assert torch.allclose(single.img_states[0], batch.img_states[i], atol=1e-5)


@pytest.mark.parametrize("num_img", [1, 2])
@torch.no_grad()
def test_img_states_match_a_full_recomputation_when_img_appears_mid_sequence(model, images, num_img):
    """Makes a token the tiny model really generates play [IMG0], so the window lands mid-sequence and
    rows stop at different lengths; the cached states must equal a cache-free pass."""
    mask, rows, embeds = _inputs(model, images, INSTRUCTIONS)
    free = greedy_generate(model.llm, embeds, mask, rows, max_new_tokens=10, no_repeat_ngram_size=3, eos_id=2)
    fake_img0 = free.token_ids[0][3]  # row 0 generates this at step 3
    out = greedy_generate(
        model.llm,
        embeds,
        mask,
        rows,
        max_new_tokens=10,
        no_repeat_ngram_size=3,
        eos_id=2,
        img_first_id=fake_img0,
        num_img=num_img,
    )
    assert out.found_img[0]
    if num_img == 1:  # [IMG0] is also the last [IMG]: row 0 stops right there, the others go on
        assert len(out.token_ids[0]) == 4
        assert max(len(t) for t in out.token_ids) > 4
    for i in range(3):
        gen = out.token_ids[i]
        full = _full_states(model, rows[i], gen, images[i])  # state j predicts token j+1
        stopped_on_img = fake_img0 in gen and len(gen) == gen.index(fake_img0) + num_img and len(gen) < 10
        start = img_window_start(gen, fake_img0, num_img, continued=stopped_on_img)
        first_state = len(rows[i]) - 1 + start  # the state predicting generated token `start`
        expected = full[first_state : first_state + num_img]
        assert torch.allclose(out.img_states[i], expected, atol=1e-4), f"row {i}"
        if fake_img0 in gen:
            # the window starts exactly at the state that predicted [IMG0] (or is pulled back to fit)
            assert start <= gen.index(fake_img0)
    assert out.img_states.shape == (3, num_img, model.config.llm.hidden_size)


@torch.no_grad()
def test_no_img_generated_uses_the_fallback_window(model, images):
    mask, rows, embeds = _inputs(model, images[:1], INSTRUCTIONS[:1])
    out = greedy_generate(
        model.llm,
        embeds,
        mask,
        rows,
        max_new_tokens=12,
        no_repeat_ngram_size=3,
        eos_id=2,
        img_first_id=model.config.tokens.img_first_id,
        num_img=8,
    )
    gen = out.token_ids[0]
    assert not out.found_img[0]
    full = _full_states(model, rows[0], gen, images[0])
    first = len(rows[0]) - 1 + (len(gen) - 9)
    assert torch.allclose(out.img_states[0], full[first : first + 8], atol=1e-4)


@torch.no_grad()
def test_no_repeat_ngram_bans_repeats(model, images):
    mask, rows, embeds = _inputs(model, images[:1], INSTRUCTIONS[:1])
    out = greedy_generate(model.llm, embeds, mask, rows, max_new_tokens=40, no_repeat_ngram_size=3, eos_id=-1)
    seq = rows[0] + out.token_ids[0]
    trigrams = [tuple(seq[i : i + 3]) for i in range(len(rows[0]) - 2, len(seq) - 2)]
    prompt_trigrams = {tuple(rows[0][i : i + 3]) for i in range(len(rows[0]) - 2)}
    generated = trigrams  # every trigram that ends in a generated token
    assert len(generated) == 40
    assert len(set(generated)) == len(generated)
    assert not (set(generated) & prompt_trigrams)
