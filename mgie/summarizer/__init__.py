"""The summarizer pass: a Flan-T5-class encoder-decoder condenses the MLLM's "explain" paragraph.

MGIE builds its concise expressive instructions in two steps: LLaVA explains what the edited image will be
like (`MGIE.explain`), then Flan-T5-XXL summarizes that paragraph with the reference's prompt and beam
settings. Split as `mgie` itself is: `config` (sizes, generation settings, presets), `tokenizer` (the
in-process T5 tokenizer of the tiny preset), `model` (`Summarizer`: loading, beam search, fingerprint).

The reference's summarizer is `REFERENCE_SUMMARIZER`, run in bfloat16: the preset of that name has its
sizes; bring its HF directory and load it with `dtype=torch.bfloat16` to match.

    summ = Summarizer.from_preset("tiny", seed=0)          # seeded random T5, tokenizer built in process
    summ = Summarizer.from_pretrained("/models/flan-t5-xxl")  # an HF T5 / Flan-T5 directory
    summ.summarize(["The image will show a bowl of fresh salad ..."])
"""

from .config import (
    REFERENCE_DTYPE,
    REFERENCE_SUMMARIZER,
    SUMMARIZER_PRESETS,
    SummarizerConfig,
    T5Sizes,
    preset_fingerprint,
    summarizer_preset,
)
from .model import Summarizer, fetch_hf_dir
from .tokenizer import TINY_PIECES, TINY_VOCAB_SIZE, build_t5_tokenizer

__all__ = [
    "REFERENCE_DTYPE",
    "REFERENCE_SUMMARIZER",
    "SUMMARIZER_PRESETS",
    "Summarizer",
    "SummarizerConfig",
    "T5Sizes",
    "TINY_PIECES",
    "TINY_VOCAB_SIZE",
    "build_t5_tokenizer",
    "fetch_hf_dir",
    "preset_fingerprint",
    "summarizer_preset",
]
