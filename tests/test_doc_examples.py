"""Every fenced Python block of the README and docs/ runs, as a reader would paste it, in a folder that
holds the `cat.jpg` the examples open: a doc example cannot break silently."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, code in enumerate(BLOCK.findall(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i + 1}", code))
    return found


def test_the_docs_have_python_examples_to_run():
    assert {name.split("#")[0] for name, _ in _blocks()} >= {"README.md", "docs/datasets.md"}


@pytest.mark.parametrize("name,code", _blocks(), ids=[name for name, _ in _blocks()])
def test_doc_example_runs(tmp_path, name, code):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "cat.jpg")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, f"{name} failed:\n{code}\n{proc.stderr[-3000:]}"
