"""The instructions a training row may carry: each kind's own phrasings, composed with the frames and the
attribute words people put around an edit.

A tiny MLLM learned from scratch memorises whole strings when each kind has ten: on new wordings it then
names the wrong edit even where the wording holds the kind's key word ("raise the contrast"). Training on
the same edits said many ways (a verb of direction with an attribute, polite frames, other nouns for the
photo) teaches it that the key words carry the edit and the frame does not.

The held-out phrasings stay unseen: a composed phrasing whose normal form (no frame words, one noun for the
photo) holds a held-out phrasing's normal form is never produced (`training_phrasings`; tests/test_mgie_tiny.py
checks what `draw` gives).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Iterable

# the words around an edit that do not change it
PREFIXES = ("", "please ", "could you ", "can you ", "i'd like you to ", "just ", "go ahead and ", "ok, ")
SUFFIXES = ("", " please", " for me", ", thanks", ".", "!")
# other nouns for the photo, swapped into a phrasing that names one
PHOTO_NOUNS = ("the photo", "the picture", "the image", "this shot")
# a direction verb with an attribute: the editor's vocabulary of sliders
UP_VERBS = ("increase the", "boost the", "raise the", "turn up the", "push up the", "more", "add more")
DOWN_VERBS = ("decrease the", "lower the", "reduce the", "turn down the", "cut the", "less")
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (attributes said with an up verb, attributes said with a down verb)
    "brighten": (("brightness", "exposure", "light"), ()),
    "darken": ((), ("brightness", "exposure", "light")),
    "contrast": (("contrast",), ()),
    "saturate": (("saturation", "color intensity", "vibrance"), ()),
    "warmer": (("warmth", "warm tones"), ("coolness", "blue tones")),
    "cooler": (("coolness", "blue tones"), ("warmth", "warm tones")),
    "sharpen": (("sharpness", "detail"), ()),
    "blur": (("blur", "softness"), ("sharpness", "focus")),
    "vignette": (("vignetting", "corner shading"), ()),
}
_FRAME_WORDS = {
    "please",
    "thanks",
    "just",
    "ok",
    "for",
    "me",
    "could",
    "you",
    "can",
    "i'd",
    "like",
    "to",
    "go",
    "ahead",
    "and",
}


def normal_form(text: str) -> str:
    """Lower case, no punctuation or frame words, one noun for the photo, one spelling of colour."""
    t = text.lower().replace("colour", "color")
    for noun in PHOTO_NOUNS[1:]:
        t = t.replace(noun, PHOTO_NOUNS[0])
    words = [w for w in re.sub(r"[^a-z' ]", " ", t).split() if w not in _FRAME_WORDS]
    return " ".join(words)


def cores(kind: str, own: tuple[str, ...]) -> tuple[str, ...]:
    """The kind's phrasings before framing: its own, with the photo's noun swapped, and verb + attribute."""
    out = list(own)
    for p in own:
        for noun in PHOTO_NOUNS:
            if noun in p:
                out += [p.replace(noun, other) for other in PHOTO_NOUNS if other != noun]
    up, down = ATTRIBUTES.get(kind, ((), ()))
    out += [f"{v} {a}" for v in UP_VERBS for a in up] + [f"{v} {a}" for v in DOWN_VERBS for a in down]
    return tuple(dict.fromkeys(out))


@lru_cache(maxsize=None)
def training_phrasings(kind: str, own: tuple[str, ...], held_out: tuple[str, ...]) -> tuple[str, ...]:
    """Every instruction a training row of `kind` may carry, in a fixed order; none holds a held-out one."""
    banned = [normal_form(h) for h in held_out]
    framed = [f"{pre}{core}{suf}" for core in cores(kind, own) for pre in PREFIXES for suf in SUFFIXES]
    return tuple(p for p in dict.fromkeys(framed) if not any(b in normal_form(p) for b in banned))


@lru_cache(maxsize=None)
def _draw_pool(kind: str, own: tuple[str, ...], held_out: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(every allowed phrasing, the allowed cores): made once per kind, not per row."""
    allowed = frozenset(training_phrasings(kind, own, held_out))
    return allowed, tuple(c for c in cores(kind, own) if c in allowed)


def draw(kind: str, own: tuple[str, ...], held_out: tuple[str, ...], rng: random.Random) -> str:
    """One training instruction: a core drawn evenly (so a kind's own phrasings keep their weight against the
    many attribute pairs), then a frame; half of the rows keep the core bare, as most users type it."""
    allowed, pool = _draw_pool(kind, own, held_out)
    core = rng.choice(pool)
    if rng.random() < 0.5:
        return core
    framed = f"{rng.choice(PREFIXES)}{core}{rng.choice(SUFFIXES)}"
    return framed if framed in allowed else core


def check_disjoint(phrasings: Iterable[str], held_out: tuple[str, ...]) -> None:
    """Raise if any of `phrasings` holds one of the held-out phrasings (in normal form)."""
    banned = {normal_form(h): h for h in held_out}
    for p in phrasings:
        hit = next((h for b, h in banned.items() if b in normal_form(p)), None)
        if hit is not None:
            raise AssertionError(f"training phrasing {p!r} holds held-out {hit!r}")
