"""The Flan-T5-class summarizer on its tiny preset: tokenizer layout, the reference generate call,
batching, loading HF directories (safetensors, .bin, remote) and input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import T5ForConditionalGeneration

from mgie import Summarizer
from mgie.summarizer import TINY_VOCAB_SIZE, build_t5_tokenizer, summarizer_preset
from tests.badinputs import PickledCode

PARAGRAPHS = [
    "The image will be brighter, and the sky will look a deeper blue over the hills.",
    "A bowl of fresh salad replaces the pizza, with green leaves and sliced tomatoes.",
    "The cat wears a small red hat.",
]


@pytest.fixture(scope="module")
def summ() -> Summarizer:
    return Summarizer.from_preset("tiny", seed=0)


def test_tokenizer_has_t5_layout():
    tok = build_t5_tokenizer()
    assert len(tok) == TINY_VOCAB_SIZE
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == TINY_VOCAB_SIZE - 1  # sentinels count down from the end
    assert tok.convert_tokens_to_ids("<extra_id_99>") == TINY_VOCAB_SIZE - 100
    ids = tok("make it brighter")["input_ids"]
    assert ids[-1] == 1 and ids.count(1) == 1  # inputs end with </s>, as T5's do
    # characters outside the vocabulary go through byte pieces and come back intact
    for text in ["The sky, 32 words: bluer!", "café über 漢字"]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    # whitespace runs (the prompt's blank line) collapse to one space, like T5's normaliser
    assert tok.decode(tok("in 32 words:\n\nThe")["input_ids"], skip_special_tokens=True) == "in 32 words: The"


def test_config_carries_the_reference_settings():
    from mgie.summarizer import REFERENCE_DTYPE, REFERENCE_SUMMARIZER, SUMMARIZER_PRESETS

    # the reference's summarizer, by name, at its sizes and precision (process_data.ipynb)
    assert REFERENCE_SUMMARIZER == "jordiclive/flan-t5-11b-summarizer-filtered" and REFERENCE_DTYPE == torch.bfloat16
    assert summarizer_preset("flan-t5-11b-summarizer-filtered").model == summarizer_preset("flan-t5-xxl").model
    assert "flan-t5-11b-summarizer-filtered" in SUMMARIZER_PRESETS
    for name in ("tiny", "flan-t5-xxl", "flan-t5-11b-summarizer-filtered"):
        cfg = summarizer_preset(name)
        assert cfg.prompt_template == "summarize the following paragraph in 32 words:\n\n{text}"
        assert (cfg.num_beams, cfg.min_length, cfg.max_length, cfg.no_repeat_ngram_size) == (5, 5, 64, 3)
    real = summarizer_preset("flan-t5-xxl").model
    assert (real.d_model, real.d_ff, real.num_layers, real.num_heads, real.vocab_size) == (4096, 10240, 24, 64, 32128)
    with torch.device("meta"):  # count the real size without allocating 11B weights
        params = sum(p.numel() for p in T5ForConditionalGeneration(real.to_hf()).parameters())
    assert 11.0e9 < params < 11.3e9, params


def test_summarize_is_the_reference_generate_call(summ):
    """Our wrapper must equal a plain HF generate with the reference's arguments on the reference prompt."""
    out = summ.summarize(PARAGRAPHS)
    for text, got in zip(PARAGRAPHS, out):
        prompt = f"summarize the following paragraph in 32 words:\n\n{text}"
        ids = summ.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ref = summ.model.generate(
            input_ids=ids,
            num_beams=5,
            min_length=5,
            max_length=64,
            no_repeat_ngram_size=3,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        )[0]
        assert ref.shape[0] <= 64
        assert len(ref) >= 5 or ref[-1] == 1
        grams = [tuple(ref[i : i + 3].tolist()) for i in range(len(ref) - 2) if 0 not in ref[i : i + 3].tolist()]
        assert len(grams) == len(set(grams)), "a 3-gram repeats"
        assert got == summ.tokenizer.decode(ref, skip_special_tokens=True).strip()
        assert got, "an empty summary"


def test_batch_equals_singles_and_seed_determinism(summ):
    batch = summ.summarize(PARAGRAPHS)
    assert batch == [summ.summarize([p])[0] for p in PARAGRAPHS]
    assert Summarizer.from_preset("tiny", seed=0).summarize(PARAGRAPHS) == batch
    other = Summarizer.from_preset("tiny", seed=1)
    assert other.summarize(PARAGRAPHS) != batch
    assert other.fingerprint() != summ.fingerprint()
    assert summ.summarize([]) == []


def test_generation_settings_are_config_fields(summ):
    short = Summarizer(dataclasses.replace(summ.config, num_beams=1, max_length=6), summ.model, summ.tokenizer, "x")
    assert short.generation_config().num_beams == 1
    ids = short.generate_ids(PARAGRAPHS)  # (3, <= 6): max_length counts the decoder start token
    assert ids.shape[0] == 3 and ids.shape[1] <= 6 and (ids[:, 0] == 0).all()
    assert summ.generate_ids(PARAGRAPHS).shape[1] > 6  # the preset's own max_length lets it run on
    with pytest.raises(ValueError, match="min_length"):
        dataclasses.replace(summ.config, min_length=70).validate()


def test_save_and_load_hf_directory_safetensors_and_bin(summ, tmp_path):
    st_dir = tmp_path / "flan-st"
    summ.save_pretrained(str(st_dir))
    assert (st_dir / "model.safetensors").exists() and (st_dir / "config.json").exists()
    loaded = Summarizer.from_pretrained(str(st_dir))
    expected = summ.summarize(PARAGRAPHS)
    assert loaded.summarize(PARAGRAPHS) == expected
    assert Summarizer.from_pretrained(f"file://{st_dir}").fingerprint() == loaded.fingerprint()

    # the same weights as a pytorch_model.bin (how older Flan-T5 directories ship)
    bin_dir = tmp_path / "flan-bin"
    summ.save_pretrained(str(bin_dir))
    state = {k: v.clone() for k, v in summ.model.state_dict().items()}
    (bin_dir / "model.safetensors").unlink()
    torch.save(state, bin_dir / "pytorch_model.bin")
    from_bin = Summarizer.from_pretrained(str(bin_dir))
    assert from_bin.summarize(PARAGRAPHS) == expected
    assert from_bin.fingerprint() != loaded.fingerprint()  # different files, different identity

    # generation overrides at load time
    assert Summarizer.from_pretrained(str(st_dir), num_beams=2).config.num_beams == 2


def test_bin_with_pickled_code_is_refused(summ, tmp_path):
    bad = tmp_path / "bad"
    summ.save_pretrained(str(bad))
    (bad / "model.safetensors").unlink()
    state = dict(summ.model.state_dict())
    ran = tmp_path / "ran"
    state["extra"] = PickledCode(ran)
    with open(bad / "pytorch_model.bin", "wb") as f:
        torch.save(state, f, pickle_protocol=2)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported|global"):
        Summarizer.from_pretrained(str(bad))
    assert not ran.exists()
    # the file really carries code: an unrestricted load runs it
    torch.load(bad / "pytorch_model.bin", weights_only=False)
    assert ran.exists()


def test_load_from_a_remote_store(summ, tmp_path, monkeypatch):
    import fsspec

    local = tmp_path / "src"
    summ.save_pretrained(str(local))
    fs = fsspec.filesystem("memory")
    for p in local.iterdir():
        fs.pipe(f"/flan/{p.name}", p.read_bytes())
    monkeypatch.setenv("MGIE_CACHE", str(tmp_path / "cache"))
    remote = Summarizer.from_pretrained("memory://flan")
    assert remote.summarize(PARAGRAPHS[:1]) == summ.summarize(PARAGRAPHS[:1])


def test_errors_name_the_problem(summ, tmp_path):
    with pytest.raises(TypeError, match="list of str"):
        summ.summarize("one paragraph")
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        summ.summarize(["fine", "   "])
    with pytest.raises(TypeError, match=r"texts\[0\] must be str"):
        summ.summarize([3])
    with pytest.raises(ValueError, match="unknown summarizer preset"):
        Summarizer.from_preset("t5-huge")
    with pytest.raises(FileNotFoundError, match="not found"):
        Summarizer.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "notT5").mkdir()
    (tmp_path / "notT5" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="needs 't5'"):
        Summarizer.from_pretrained(str(tmp_path / "notT5"))


# ------------------------------------------------------------------------------------ conditioning on a given text


def _work_images(n: int):
    import numpy as np
    from PIL import Image

    from mgie import preprocess_image

    rng = np.random.default_rng(5)
    return [preprocess_image(Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), 32) for _ in range(n)]


def test_express_with_text_takes_the_states_that_predict_img_tokens():
    from mgie import MGIE
    from mgie.images import to_clip_pixels
    from mgie.mllm import splice_image_features
    from mgie.prompt import chat_prompt, image_placeholder

    model = MGIE.from_preset("tiny", seed=0, parts={"express"})
    images = _work_images(3)
    instructions = ["make it brighter", "add a hat", "winter"]
    texts = ["the image is brighter and warmer.", "a red hat sits on the cat's head, slightly tilted.", "snow"]
    expr = model.express_with_text(images, instructions, texts)
    assert expr.conditioning.shape == (3, 77, 32) and expr.texts == texts

    cfg = model.config
    for i in range(3):  # one unpadded row at a time, [IMG] positions found by searching the ids
        prompt = chat_prompt(
            cfg.prompt,
            cfg.prompt.edit_template.format(instruction=instructions[i]),
            image_placeholder(cfg.tokens, cfg.vision.num_patches),
        )
        ids = model.tokenizer(prompt)["input_ids"] + model.tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids + cfg.tokens.img_ids])
        with torch.no_grad():
            embeds = splice_image_features(
                model.llm.get_input_embeddings()(ids),
                ids,
                model.vision(to_clip_pixels([images[i]], cfg.vision)),
                cfg.tokens.im_patch_id,
            )
            hidden = model.llm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1][0]
            first = int((ids[0] == cfg.tokens.img_first_id).nonzero()[0])
            want = model.edit_head(hidden[first - 1 : first - 1 + 8][None])
        torch.testing.assert_close(expr.conditioning[i : i + 1], want, atol=2e-5, rtol=1e-4)

    other = model.express_with_text(images[:1], instructions[:1], ["a completely different answer"])
    assert (other.conditioning[0] - expr.conditioning[0]).abs().max() > 1e-4  # the text matters
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        model.express_with_text(images[:1], instructions[:1], [" "])


def test_summarizer_spec_identity_without_loading(summ, tmp_path):
    """The run fingerprint's view of a summarizer: presets by seed, directories by config and file sizes."""
    from pipeline.summarize import SummarizerSpec

    assert SummarizerSpec("tiny", seed=0).describe()["fingerprint"] == summ.fingerprint()
    assert SummarizerSpec("tiny", seed=1).describe()["fingerprint"] != summ.fingerprint()
    assert SummarizerSpec("flan-t5-xxl").describe()["config"]["model"]["d_model"] == 4096  # no 11B build
    path = tmp_path / "flan"
    summ.save_pretrained(str(path))
    spec = SummarizerSpec(str(path))
    first = spec.describe()
    assert first["config"]["num_beams"] == 5
    assert spec.load().summarize(PARAGRAPHS[:1]) == summ.summarize(PARAGRAPHS[:1])
    (path / "extra.txt").write_text("x")  # any change in the directory is another summarizer
    assert spec.describe()["fingerprint"] != first["fingerprint"]
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SummarizerSpec(str(tmp_path / "nothing")).describe()
