"""Word pieces for a model that learns its LLM from scratch: fitted on the training texts only, every text
still spelled, and a model resized to them that keeps its other parts and survives a save and a load."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mgie.model import MGIE
from mgie.tokenizer import fit_tiny_tokenizer, tiny_tokenizer_from
from mgie.word_pieces import with_tokenizer
from pipeline.training.phrasings import check_disjoint
from pipeline.training.procedural import EDITS, tokenizer_corpus

CORPUS = ["make it brighter", "make it darker please", "The photo becomes brighter, with lighter shadows."] * 3


def _tokenizer(texts=CORPUS, pieces=400):
    core, size = fit_tiny_tokenizer(texts, pieces)
    model = MGIE.from_preset("tiny")
    return with_tokenizer(model, core.to_str()), size


def test_frequent_words_become_one_piece_and_unseen_text_is_still_spelled():
    model, size = _tokenizer()
    tok = model.tokenizer
    assert tok.tokenize("make it brighter") == ["▁make", "▁it", "▁brighter"]
    assert size <= 400
    for text in ("make the photo chilly, Grün!", "ÉCRAN 42 %", "darker"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert max(ids) < size  # ordinary text never lands on a marker
    # the markers follow the fitted pieces, as the letter tokenizer's follow its 300
    assert tok.convert_tokens_to_ids("<im_patch>") == size == model.config.tokens.im_patch_id
    assert tok.convert_tokens_to_ids("[IMG0]") == size + 3 == model.config.tokens.img_ids[0]


def test_a_fitted_tokenizer_is_capped_at_its_pieces():
    core, size = fit_tiny_tokenizer(tokenizer_corpus("composed"), 330)
    assert size == core.get_vocab_size() == 330


def test_the_corpus_holds_no_held_out_phrasing():
    for phrasings in ("train", "composed"):
        texts = tokenizer_corpus(phrasings)
        for edit in EDITS:
            assert not set(edit.unseen_phrasings) & set(texts)
            assert edit.expressive in texts
    # the composed set also holds none in normal form (the kinds' own phrasings do: "make the image dimmer")
    for edit in EDITS:
        check_disjoint(tokenizer_corpus("composed"), edit.unseen_phrasings)


def test_the_resized_model_keeps_its_other_parts_and_round_trips(tmp_path):
    source = MGIE.from_preset("tiny")
    model, size = _tokenizer()
    for name in ("unet", "vae", "edit_head", "vision"):
        for (key, a), b in zip(getattr(source, name).state_dict().items(), getattr(model, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} changed"
    assert model.llm.get_input_embeddings().weight.shape[0] == size + 3 + 8
    # the LLM's [IMG] rows are the head's, as from_preset lays them out
    img = model.config.tokens.img_ids
    assert torch.equal(model.llm.get_input_embeddings().weight[img], model.edit_head.img_embeds)
    assert model.fingerprint() != source.fingerprint()

    model.save_pretrained(str(tmp_path / "m"))
    loaded = MGIE.from_pretrained(str(tmp_path / "m"))
    assert loaded.tokenizer.tokenize("make it brighter") == ["▁make", "▁it", "▁brighter"]
    photo = Image.new("RGB", (40, 32), (120, 80, 40))
    a, b = model.express([photo], ["make it darker"]), loaded.express([photo], ["make it darker"])
    assert a.raw_texts == b.raw_texts
    assert (a.conditioning - b.conditioning).abs().max() < 1e-4, (a.conditioning - b.conditioning).abs().max()


def test_a_core_whose_size_disagrees_with_the_markers_is_refused():
    core, size = fit_tiny_tokenizer(CORPUS, 400)
    model = MGIE.from_preset("tiny")
    with pytest.raises(ValueError, match=f"the tokenizer has {size} pieces; im_patch_id is 300"):
        tiny_tokenizer_from(core.to_str(), model.config.tokens)  # markers at 300, pieces != 300


def test_the_held_out_text_check_counts_every_held_out_phrasing(tmp_path):
    import json

    from bench.heldout_texts import main

    MGIE.from_preset("tiny").save_pretrained(str(tmp_path / "m"))
    figures = main(["--model", str(tmp_path / "m"), "--json", str(tmp_path / "texts.json")])
    assert json.loads((tmp_path / "texts.json").read_text()) == json.loads(json.dumps(figures))
    assert len(figures["rows"]) == sum(len(e.held_out_phrasings) for e in EDITS)
    named = [r["names_the_edit"] for r in figures["rows"]]
    assert figures["named_overall"] == sum(named) / len(named)
    assert set(figures["named_by_kind"]) == {e.name for e in EDITS}
