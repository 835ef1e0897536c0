"""Configuration of the summarizer: the T5 sizes, the reference prompt and beam settings, and the presets.

Every value the reference passes to `generate` is a field of `SummarizerConfig`. The reference's summarizer
is `jordiclive/flan-t5-11b-summarizer-filtered` (a Flan-T5-XXL fine-tune) run in bfloat16
(process_data.ipynb: `pipeline('summarization', ..., torch_dtype=T.bfloat16)`): the preset of that name has
its sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import T5Config

from .tokenizer import TINY_VOCAB_SIZE


# a field list of the same shape as mgie.config's sections: deliberate (see the note there)
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
            vocab_size=TINY_VOCAB_SIZE,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
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
    identity = json.dumps(
        {"summarizer_preset": name, "seed": seed, "config": summarizer_preset(name).to_dict()}, sort_keys=True
    )
    return hashlib.sha256(identity.encode()).hexdigest()
