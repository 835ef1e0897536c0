"""The flags every timed benchmark takes: a smoke mode and the folder its JSON goes to."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = "bench/results"


def bench_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """A benchmark's parser: its module docstring as the description (layout kept), `--quick` (`quick` says what
    the smoke run is) and `--out`; the benchmark adds its own sizes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--out", default=RESULTS, help=f"folder for the JSON (default: {RESULTS})")
    return ap


def save_figures(path: str | Path, figures: dict, indent: int = 2) -> Path:
    """Writes a benchmark's JSON (its folder made first) and returns the path, for the line that names it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=indent, default=str) + "\n")
    return path
