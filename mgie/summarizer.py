"""The summarizer pass: a Flan-T5-class encoder-decoder condenses the MLLM's "explain" paragraph.

MGIE builds its concise expressive instructions in two steps: LLaVA explains what the edited image will be
like (`MGIE.explain`), then Flan-T5-XXL summarizes that paragraph with the prompt and beam settings below.
Every value the reference passes to `generate` is a field of `SummarizerConfig`.

The reference's summarizer is `jordiclive/flan-t5-11b-summarizer-filtered` (a Flan-T5-XXL fine-tune) run in
bfloat16 (process_data.ipynb: `pipeline('summarization', ..., torch_dtype=T.bfloat16)`): the preset of that
name has its sizes; bring its HF directory and load it with `dtype=torch.bfloat16` to match.

    summ = Summarizer.from_preset("tiny", seed=0)          # seeded random T5, tokenizer built in process
    summ = Summarizer.from_pretrained("/models/flan-t5-xxl")  # an HF T5 / Flan-T5 directory
    summ.summarize(["The image will show a bowl of fresh salad ..."])
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast, T5Config,
    T5ForConditionalGeneration,
)

from . import checkpoint as ckpt


@dataclass
class T5Sizes:
    """Architecture of the T5 v1.1 / Flan-T5 encoder-decoder (fields as in transformers' T5Config)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_decoder_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6
    tie_word_embeddings: bool = False  # v1.1 / Flan-T5 have a separate lm_head
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0  # T5 starts decoding from <pad>

    def to_hf(self) -> T5Config:
        return T5Config(**dataclasses.asdict(self), dropout_rate=0.0, is_encoder_decoder=True)


@dataclass
class SummarizerConfig:
    """Model sizes plus the reference prompt and beam-search settings."""

    name: str = "flan-t5-xxl"
    model: T5Sizes = field(default_factory=T5Sizes)
    prompt_template: str = "summarize the following paragraph in 32 words:\n\n{text}"
    num_beams: int = 5
    min_length: int = 5  # decoder tokens, start token included (transformers' convention)
    max_length: int = 64
    no_repeat_ngram_size: int = 3
    max_input_tokens: int = 512  # longer prompts are truncated; T5 was trained on 512-token inputs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "SummarizerConfig":
        if "{text}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{text}}', got {self.prompt_template!r}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(f"need 0 <= min_length <= max_length, got {self.min_length} and {self.max_length}")
        if self.max_input_tokens < 8:
            raise ValueError(f"max_input_tokens must be >= 8, got {self.max_input_tokens}")
        return self


def _tiny() -> SummarizerConfig:
    return SummarizerConfig(
        name="tiny",
        model=T5Sizes(
            vocab_size=TINY_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        ),
    )


def _flan_t5_xxl() -> SummarizerConfig:
    return SummarizerConfig()


REFERENCE_SUMMARIZER = "jordiclive/flan-t5-11b-summarizer-filtered"  # the model the reference used
REFERENCE_DTYPE = torch.bfloat16  # and its precision there


def _reference() -> SummarizerConfig:
    return SummarizerConfig(name="flan-t5-11b-summarizer-filtered")


SUMMARIZER_PRESETS = {"tiny": _tiny, "flan-t5-xxl": _flan_t5_xxl, "flan-t5-11b-summarizer-filtered": _reference}


def summarizer_preset(name: str) -> SummarizerConfig:
    try:
        return SUMMARIZER_PRESETS[name]().validate()
    except KeyError:
        raise ValueError(f"unknown summarizer preset {name!r}; known: {sorted(SUMMARIZER_PRESETS)}") from None


def preset_fingerprint(name: str, seed: int) -> str:
    """Identity of a preset summarizer (random weights from `seed`), without building it."""
    identity = json.dumps({"summarizer_preset": name, "seed": seed, "config": summarizer_preset(name).to_dict()},
                          sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- tokenizer

_WORDS = ["the", "image", "will", "be", "with", "and", "more", "of", "in", "a", "it", "is", "summarize",
          "following", "paragraph", "words"]
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
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                  prepend_scheme="always")])
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(_NUM_SENTINELS)],
    )
    tok.padding_side = "right"
    return tok


# ---------------------------------------------------------------------------------------------- model


def _check_texts(texts: Sequence) -> list[str]:
    from .images import check_texts

    return check_texts(texts, None, "texts")


class Summarizer:
    """Flan-T5-class summarizer: paragraph in, summary of about 32 words out (beam search)."""

    def __init__(self, config: SummarizerConfig, model: T5ForConditionalGeneration,
                 tokenizer: PreTrainedTokenizerBase, fingerprint: str | Callable[[], str]):
        """`fingerprint` is the identity itself or a function computing it on the first `fingerprint()`
        call (hashing a directory's files costs reads that loading and summarizing do not need)."""
        self.config = config.validate()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._fingerprint = fingerprint
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}")

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> "Summarizer":
        """A randomly initialised T5 of the preset's sizes with an in-process tokenizer."""
        config = summarizer_preset(name)
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        try:
            if dtype is not None and dtype.is_floating_point:
                torch.set_default_dtype(dtype)  # build at the target precision: no fp32 copy of 11B weights
            with torch.device(device or "cpu"):
                model = T5ForConditionalGeneration(config.model.to_hf())
        finally:
            torch.set_default_dtype(previous)
        tokenizer = build_t5_tokenizer(config.model.vocab_size)
        return cls(config, model, tokenizer, preset_fingerprint(name, seed)).to(device, dtype)

    @classmethod
    def from_pretrained(cls, path: str, storage_options: dict | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        **overrides: Any) -> "Summarizer":
        """Loads an HF T5 / Flan-T5 directory (config.json, tokenizer, `*.safetensors` or `pytorch_model*.bin`).

        `path` is a local directory, file:// or any fsspec URL (copied to a local cache once).
        `.bin` weights are read with `torch.load(weights_only=True)`: no pickled code runs.
        Keyword overrides set generation fields, e.g. `num_beams=1`.
        """
        directory = fetch_hf_dir(str(path), storage_options)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{path}: config.json missing; not a transformers T5 directory")
        hf_config = json.loads((directory / "config.json").read_text())
        if hf_config.get("model_type") != "t5":
            raise ValueError(f"{path}: model_type is {hf_config.get('model_type')!r}, the summarizer needs 't5'")
        weights = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
        if not weights:
            raise FileNotFoundError(f"{path}: no *.safetensors or *.bin weight files")
        model = T5ForConditionalGeneration.from_pretrained(
            str(directory), local_files_only=True, weights_only=True, dtype=dtype or torch.float32,
        )
        sizes = {f.name: hf_config[f.name] for f in dataclasses.fields(T5Sizes) if f.name in hf_config}
        sizes.setdefault("decoder_start_token_id", model.config.pad_token_id)
        if "num_decoder_layers" not in hf_config:
            sizes["num_decoder_layers"] = sizes.get("num_layers", T5Sizes.num_layers)
        config = dataclasses.replace(SummarizerConfig(name=directory.name, model=T5Sizes(**sizes)), **overrides)
        if getattr(model.config, "decoder_start_token_id", None) is None:
            model.config.decoder_start_token_id = config.model.decoder_start_token_id
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        return cls(config, model, tokenizer, functools.partial(_dir_fingerprint, directory, config)).to(device, dtype)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Summarizer":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            self.model.to(**kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def fingerprint(self) -> str:
        """Identity of weights, tokenizer and generation settings, computed on first use. A run's
        fingerprint does not use it: the driver identifies the summarizer without loading it
        (pipeline.summarize.SummarizerSpec.describe)."""
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        return self._fingerprint

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [self.config.prompt_template.format(text=t.strip()) for t in _check_texts(texts)]

    def generation_config(self) -> GenerationConfig:
        c, m = self.config, self.config.model
        return GenerationConfig(
            num_beams=c.num_beams, min_length=c.min_length, max_length=c.max_length,
            no_repeat_ngram_size=c.no_repeat_ngram_size, do_sample=False,
            decoder_start_token_id=m.decoder_start_token_id, eos_token_id=m.eos_token_id, pad_token_id=m.pad_token_id,
        )

    @torch.no_grad()
    def generate_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Beam search on the prompted paragraphs -> decoder ids (B, <= max_length), start token first."""
        batch = self.tokenizer(self.prompts(texts), return_tensors="pt", padding=True, truncation=True,
                               max_length=self.config.max_input_tokens)
        return self.model.generate(
            input_ids=batch["input_ids"].to(self.device),  # (B, T)
            attention_mask=batch["attention_mask"].to(self.device),  # (B, T)
            generation_config=self.generation_config(),
        )

    def summarize(self, texts: Sequence[str]) -> list[str]:
        """One summary per paragraph, in order. An empty list gives an empty list."""
        if not _check_texts(texts):
            return []
        out = self.generate_ids(texts)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def save_pretrained(self, path: str) -> None:
        """Writes an HF T5 directory (config.json, model.safetensors, tokenizer files)."""
        directory = Path(ckpt.local_path(path))
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))


# ---------------------------------------------------------------------------------------------- files


def fetch_hf_dir(url: str, storage_options: dict | None = None) -> Path:
    """A local directory with the files at `url`; remote directories are copied to the cache once,
    keyed by the URL and the names and sizes of the files there."""
    if not ckpt.is_remote(url):
        directory = Path(ckpt.local_path(url))
        if not directory.is_dir():
            raise FileNotFoundError(f"summarizer directory not found: {url}")
        return directory
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    listing = sorted((p.rsplit("/", 1)[-1], int(info.get("size") or 0))
                     for p, info in fs.find(root, detail=True).items())
    if not listing:
        raise FileNotFoundError(f"summarizer directory not found or empty: {url}")
    key = hashlib.sha256(json.dumps([url, listing]).encode()).hexdigest()[:24]
    return ckpt.copy_to_cache(fs, root, ckpt.cache_root() / f"summarizer-{key}")


def _dir_fingerprint(directory: Path, config: SummarizerConfig) -> str:
    """sha256 over the config and, per file (tokenizer, weights), its name, size and content (first and
    last 4 MiB of a large file: see checkpoint.hash_file_edges)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for p in sorted(directory.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        ckpt.hash_file_edges(h, p)
    return h.hexdigest()
