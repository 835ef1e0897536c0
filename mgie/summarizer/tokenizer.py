"""The summarizer's processing side: an in-process tokenizer with T5's layout, for the tiny preset.

A real T5 / Flan-T5 directory brings its own tokenizer (`Summarizer.from_pretrained` loads it); this one lets
tests and the tiny preset run with no files, with the same special ids and sentinel layout.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

_WORDS = [
    "the",
    "image",
    "will",
    "be",
    "with",
    "and",
    "more",
    "of",
    "in",
    "a",
    "it",
    "is",
    "summarize",
    "following",
    "paragraph",
    "words",
]
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;'\"!?-()"
_NUM_SENTINELS = 100  # <extra_id_0..99> close the vocabulary, as in T5
TINY_PIECES = 3 + 256 + 1 + len(_CHARS) + len(_WORDS)  # specials, bytes, "▁", characters, whole words
TINY_VOCAB_SIZE = TINY_PIECES + _NUM_SENTINELS  # == 449


def build_t5_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """An in-process SentencePiece-style unigram tokenizer with T5's layout.

    `<pad>`/`</s>`/`<unk>` at 0/1/2, byte fallback pieces, a small character + word vocabulary, unused
    placeholders up to the sentinels, and `<extra_id_99..0>` as the last 100 ids. Inputs end with `</s>`.
    """
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    pieces.append(("▁", -2.0))
    pieces += [(c, -5.0) for c in _CHARS]
    pieces += [("▁" + w, -1.0) for w in _WORDS]  # a whole word scores above its letters
    assert len(pieces) == TINY_PIECES
    if vocab_size < TINY_PIECES + _NUM_SENTINELS:
        raise ValueError(f"vocab_size must be >= {TINY_PIECES + _NUM_SENTINELS} for the in-process tokenizer")
    while len(pieces) < vocab_size - _NUM_SENTINELS:
        pieces.append((f"<unused{len(pieces)}>", -100.0))
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(_NUM_SENTINELS))]

    core = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=True))
    # whitespace runs (newlines too) become one space, as T5's nmt_nfkc normalisation does
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(_NUM_SENTINELS)],
    )
    tok.padding_side = "right"
    return tok
