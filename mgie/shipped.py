"""Models that ship with mgie-batch, by name: trained here, committed with the weights, the command that made
them and their evaluation (docs/training.md). `MGIE.from_pretrained("mgie-tiny")` and `--model mgie-tiny` load
one of these; the untrained start of the same architecture is the preset `mgie-tiny-init`.
"""

from __future__ import annotations

import json
from pathlib import Path

# name -> the checkpoint folder, relative to the checkout that holds this package
SHIPPED: dict[str, str] = {"mgie-tiny": "models/mgie-tiny"}
_ROOT = Path(__file__).resolve().parents[1]


def shipped_path(name: str) -> Path | None:
    """The folder of the shipped model `name`, or None when `name` is not one (a path, a URL, a preset)."""
    if name not in SHIPPED:
        return None
    path = _ROOT / SHIPPED[name]
    if not (path / "weights.json").exists():
        raise FileNotFoundError(
            f"the shipped model {name!r} is missing from {path}; it is part of the source "
            f"checkout (an install without it can pass its folder as --model)"
        )
    return path


def resolve_model_source(source: str) -> str:
    """A shipped model's name -> its folder; anything else unchanged."""
    path = shipped_path(source)
    return str(path) if path is not None else source


def shipped_passes(name: str) -> list[str]:
    """The edit kinds the shipped model `name` passes on held-out photos and wordings, as its eval.json
    (written by the run that judged it) records them."""
    path = shipped_path(name)
    if path is None:
        raise ValueError(f"{name!r} is not a shipped model; shipped: {', '.join(SHIPPED)}")
    return list(json.loads((path / "eval.json").read_text())["runs"][0]["passed"])
