"""LLaMA-style tokenizers: the in-process tiny one, loading a real one, and the special-token checks.

The tiny tokenizer has the same shape as LLaMA's (SentencePiece-style `▁` word marker, byte fallback,
`<unk>`/`<s>`/`</s>` at ids 0/1/2), then the three image tokens and the [IMG] tokens appended in the
reference order, so every code path that touches token ids is exercised with the real layout.
"""

from __future__ import annotations

import json
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .config import TokenConfig

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# ":" is a piece, as in LLaMA: the prompt's last token ("ASSISTANT:") is then no byte piece, so decoding the
# whole sequence never fuses it with byte pieces the model generates next (the reference decodes it whole)
_PUNCT = ".,'?!:"
_MERGES = [("▁", "t"), ("t", "h"), ("▁", "a"), ("h", "e"), ("i", "n"), ("r", "e"), ("e", "r"), ("a", "n")]
TINY_BASE_VOCAB = 3 + 256 + 1 + len(_LETTERS) + len(_PUNCT) + len(_MERGES)  # == 300


def _base_vocab() -> dict[str, int]:
    """<unk> <s> </s>, the 256 byte pieces, then "▁", the letters and the punctuation: every text is spelled."""
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", *_LETTERS, *_PUNCT]:
        vocab[piece] = len(vocab)
    return vocab


def build_tiny_tokenizer(tokens: TokenConfig) -> PreTrainedTokenizerFast:
    """In-process tokenizer whose base vocabulary ends right before `im_patch_id`.

    300 real pieces; a larger base (the 32000 of LLaMA, for benchmarks at the real sizes with random
    weights) is filled with unused placeholder pieces so every id lands where the real model has it.
    """
    vocab = _base_vocab()
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    assert len(vocab) == TINY_BASE_VOCAB
    if tokens.im_patch_id < TINY_BASE_VOCAB:
        raise ValueError(f"the in-process tokenizer needs im_patch_id >= {TINY_BASE_VOCAB}, got {tokens.im_patch_id}")
    while len(vocab) < tokens.im_patch_id:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    return _wrap(_core(vocab, _MERGES), tokens)


def fit_tiny_tokenizer(texts: Iterable[str], pieces: int) -> tuple[Tokenizer, int]:
    """Word pieces learned from `texts` by byte-pair merges, on top of the letter tokenizer's base
    (bytes, letters, punctuation): a word the texts hold often becomes one piece, an unseen word is spelled
    in the pieces it shares with them. For a model that learns its LLM from scratch: with letter pieces its
    few layers must first assemble every word from its letters (docs/training.md). -> (the core tokenizer,
    its base vocabulary size, <= `pieces`); `tiny_tokenizer_from` adds the model's markers."""
    from tokenizers import trainers

    base = _base_vocab()
    fitter = Tokenizer(models.BPE(unk_token="<unk>"))
    fitter.normalizer = _normalizer()
    # merges stay inside words while fitting ("▁" starts each word); the assembled tokenizer needs no
    # pre-tokenizer, as no learned merge ends before a "▁"
    fitter.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=pieces,
        special_tokens=list(base)[:3],
        initial_alphabet=["▁", *_LETTERS, *_PUNCT],
        min_frequency=2,
        show_progress=False,
    )
    fitter.train_from_iterator(texts, trainer)
    fitted = json.loads(fitter.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in fitted["merges"]]
    vocab = dict(base)
    for piece in fitted["vocab"]:  # characters of the texts beyond the base's (capitals): merges start from them
        if len(piece) == 1 and piece not in vocab:
            vocab[piece] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        if len(vocab) >= pieces:
            break
    merges = [(a, b) for a, b in merges if a + b in vocab]
    return _core(vocab, merges), len(vocab)


def tiny_tokenizer_from(core_json: str, tokens: TokenConfig) -> PreTrainedTokenizerFast:
    """A fitted core tokenizer (`fit_tiny_tokenizer(...)[0].to_str()`) with the model's markers at `tokens`."""
    core = Tokenizer.from_str(core_json)
    if core.get_vocab_size() != tokens.im_patch_id:
        raise ValueError(f"the tokenizer has {core.get_vocab_size()} pieces; im_patch_id is {tokens.im_patch_id}")
    return _wrap(core, tokens)


def _normalizer():
    # Prepend runs on every chunk between added tokens, as SentencePiece's dummy prefix did in the reference's
    # (legacy) LLaMA tokenizer: " ASSISTANT:" after <im_end> becomes "▁▁ASSISTANT:"
    return normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])


def _core(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.normalizer = _normalizer()
    core.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return core


def _wrap(core: Tokenizer, tokens: TokenConfig) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    add_mgie_tokens(tok, tokens)
    return tok


def add_mgie_tokens(tok: PreTrainedTokenizerBase, tokens: TokenConfig) -> None:
    """Adds <im_patch>, <im_start>, <im_end> then [IMG0..n] in the reference order (no-op if present)."""
    wanted = [tokens.im_patch, tokens.im_start, tokens.im_end, *tokens.img_tokens]
    missing = [t for t in wanted if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    check_token_ids(tok, tokens)


class ReservedTokenError(ValueError):
    """An instruction holds text the tokenizer reads as one of the model's own markers (`</s>`, `<im_patch>`,
    `[IMG0]`, ...). Refused, never tokenized: the reference would read such text as the marker itself and then
    fail (`<im_start>`) or go wrong silently (a stray `<im_patch>` in the prompt, `[IMG0]` taken for the
    generated one, `</s>` ending the user's turn); docs/fidelity.md."""


def reserved_token_text(tok: PreTrainedTokenizerBase, text: str) -> str | None:
    """The first special or added token (`<s>`, `</s>`, `<unk>`, `<im_patch>`, `[IMG0]`, ...) the tokenizer
    finds in `text`, or None. Judged by the ids the tokenizer gives, so it matches exactly what it would
    split out, whatever its own matching rules are."""
    reserved = set(tok.all_special_ids) | set(tok.get_added_vocab().values())
    hit = next((i for i in tok(text, add_special_tokens=False)["input_ids"] if i in reserved), None)
    return None if hit is None else tok.convert_ids_to_tokens(hit)


def check_no_reserved_tokens(tok: PreTrainedTokenizerBase, texts: list[str], name: str = "instructions") -> None:
    """Raises ReservedTokenError (one line, naming the entry, the token and the fix) for the first text that
    holds reserved token text."""
    for i, text in enumerate(texts):
        token = reserved_token_text(tok, text)
        if token is not None:
            which = name.rstrip("s") if len(texts) == 1 else f"{name}[{i}]"  # a pipeline row is asked alone
            raise ReservedTokenError(
                f"{which} contains {token!r}, text the model reserves for its own "
                f"markers ({_reserved_listing(tok)}); remove or reword it"
            )


def _reserved_listing(tok: PreTrainedTokenizerBase) -> str:
    ids = sorted(set(tok.all_special_ids) | set(tok.get_added_vocab().values()))
    names = [t for t in tok.convert_ids_to_tokens(ids) if not (t.startswith("[IMG") and t not in ("[IMG0]",))]
    img = [t for t in tok.convert_ids_to_tokens(ids) if t.startswith("[IMG")]
    return ", ".join(n if n != "[IMG0]" or len(img) == 1 else f"[IMG0]..{img[-1]}" for n in names)


def check_token_ids(tok: PreTrainedTokenizerBase, tokens: TokenConfig) -> None:
    expected = {
        tokens.im_patch: tokens.im_patch_id,
        tokens.im_start: tokens.im_start_id,
        tokens.im_end: tokens.im_end_id,
        **{name: i for name, i in zip(tokens.img_tokens, tokens.img_ids)},
    }
    wrong = {
        name: (tok.convert_tokens_to_ids(name), want)
        for name, want in expected.items()
        if tok.convert_tokens_to_ids(name) != want
    }
    if wrong:
        detail = ", ".join(f"{n}: tokenizer {got} != config {want}" for n, (got, want) in wrong.items())
        raise ValueError(f"tokenizer special-token ids do not match the model config: {detail}")


def load_tokenizer(path: str, tokens: TokenConfig) -> PreTrainedTokenizerBase:
    """Loads a saved tokenizer with LLaMA's legacy handling of text after added tokens.

    The reference ran a transformers 4.28 LLaMA tokenizer, which gives every chunk of text between added
    tokens SentencePiece's dummy "▁" prefix (the chunk " ASSISTANT:" after `<im_end>` starts "▁▁"). Current
    transformers defaults to `legacy=False` (prefix only at the start of the text), which shifts the prompt
    ids of the demo; `legacy=True` restores the reference's ids.
    """
    tok = AutoTokenizer.from_pretrained(path, legacy=True)
    _match_sentencepiece(tok, tokens)
    add_mgie_tokens(tok, tokens)
    return tok


def _match_sentencepiece(tok: PreTrainedTokenizerBase, tokens: TokenConfig) -> None:
    """Two gaps between current transformers' LLaMA tokenizer and the reference's SentencePiece one.

    Metaspace (prepend "always") skips its "▁" when a chunk already starts with a space; SentencePiece adds
    its dummy prefix regardless, so " ASSISTANT:" after <im_end> is "▁" "▁ASSISTANT" ":" in the reference:
    doubling each chunk's leading space restores that. And a directory whose tokenizer_config does not say
    `add_bos_token` loads without <s>, which LLaMA's tokenizer always put first.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    pre = backend.pre_tokenizer if backend is not None else None
    if isinstance(pre, pre_tokenizers.Metaspace) and pre.prepend_scheme == "always" and backend.normalizer is None:
        backend.normalizer = normalizers.Replace(Regex(r"\A "), "  ")
    if tok("a")["input_ids"][:1] != [tokens.bos_id]:
        tok.add_bos_token = True
        if hasattr(tok, "update_post_processor"):
            tok.update_post_processor()
        if tok("a")["input_ids"][:1] != [tokens.bos_id]:
            raise ValueError(f"tokenizer does not start sequences with <s> (id {tokens.bos_id})")
