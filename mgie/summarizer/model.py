"""The summarizer model: a Flan-T5-class encoder-decoder that condenses the MLLM's "explain" paragraph.

summ = Summarizer.from_preset("tiny", seed=0)          # seeded random T5, tokenizer built in process
summ = Summarizer.from_pretrained("/models/flan-t5-xxl")  # an HF T5 / Flan-T5 directory
summ.summarize(["The image will show a bowl of fresh salad ..."])
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, T5ForConditionalGeneration

from .. import checkpoint as ckpt
from ..devices import building_at, resolve_device
from ..images import check_texts
from .config import SummarizerConfig, T5Sizes, preset_fingerprint, summarizer_preset
from .tokenizer import build_t5_tokenizer


def _check_texts(texts: Sequence) -> list[str]:
    return check_texts(texts, None, "texts")


class Summarizer:
    """Flan-T5-class summarizer: paragraph in, summary of about 32 words out (beam search)."""

    def __init__(
        self,
        config: SummarizerConfig,
        model: T5ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        fingerprint: str | Callable[[], str],
    ):
        """`fingerprint` is the identity itself or a function computing it on the first `fingerprint()`
        call (hashing a directory's files costs reads that loading and summarizing do not need)."""
        self.config = config.validate()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._fingerprint = fingerprint
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
            )

    @classmethod
    def from_preset(
        cls, name: str, seed: int = 0, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> "Summarizer":
        """A randomly initialised T5 of the preset's sizes with an in-process tokenizer."""
        config = summarizer_preset(name)
        torch.manual_seed(seed)
        device = resolve_device(device or "cpu")
        with building_at(device, dtype):  # at the target precision: no fp32 copy of 11B weights
            model = T5ForConditionalGeneration(config.model.to_hf())
        tokenizer = build_t5_tokenizer(config.model.vocab_size)
        return cls(config, model, tokenizer, preset_fingerprint(name, seed)).to(device, dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        storage_options: dict | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **overrides: Any,
    ) -> "Summarizer":
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
            str(directory),
            local_files_only=True,
            weights_only=True,
            dtype=dtype or torch.float32,
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
            num_beams=c.num_beams,
            min_length=c.min_length,
            max_length=c.max_length,
            no_repeat_ngram_size=c.no_repeat_ngram_size,
            do_sample=False,
            decoder_start_token_id=m.decoder_start_token_id,
            eos_token_id=m.eos_token_id,
            pad_token_id=m.pad_token_id,
        )

    @torch.no_grad()
    def generate_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Beam search on the prompted paragraphs -> decoder ids (B, <= max_length), start token first."""
        batch = self.tokenizer(
            self.prompts(texts),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.config.max_input_tokens,
        )
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
    listing = ckpt.file_sizes(fs, root)
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
