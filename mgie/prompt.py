"""The vicuna_v1_1 chat prompt with the image placeholder, and the clean-up of generated text."""

from __future__ import annotations

import re

from .config import GenerationConfig, PromptConfig, TokenConfig


def image_placeholder(tokens: TokenConfig, num_patches: int) -> str:
    return tokens.im_start + tokens.im_patch * num_patches + tokens.im_end


def chat_prompt(prompt: PromptConfig, user_text: str, image_text: str) -> str:
    """`{system} USER: {user_text}\\n{image} ASSISTANT:`, as the reference builds it."""
    message = f"{user_text}\n{image_text}"
    return f"{prompt.system}{prompt.sep}{prompt.user_role}: {message}{prompt.sep}{prompt.assistant_role}:"


def clean_expressive(text: str, gen: GenerationConfig) -> str:
    """Trims generated text (already cut before [IMG0] / EOS) to the expressive instruction.

    `clean_style` "reference" is the demo's `remove_alter` exactly: cut at the first cut marker (case-blind),
    split on ".", keep the first `keep_sentences` pieces, each stripped, joined with "." (no space after the
    period), add a final "." if missing. So "It is red. The sky glows. More." -> "It is red.The sky glows.".
    "tidy" joins with ". " and collapses whitespace runs. An empty text stays empty (the reference would
    fail on it with an IndexError).
    """
    text = text.strip()
    lowered = text.lower()
    for marker in gen.cut_markers:
        at = lowered.find(marker)
        if at >= 0:
            text, lowered = text[:at], lowered[:at]
    sentences = [s.strip() for s in text.split(".")][: gen.keep_sentences]
    if gen.clean_style == "reference":
        text = ".".join(sentences)
        if not text:
            return ""
        if text[-1] != ".":
            text += "."
        return text.strip()
    text = ". ".join(s for s in sentences if s)
    text = re.sub(r"\s+", " ", text).strip()
    if text and not text.endswith("."):
        text += "."
    return text
