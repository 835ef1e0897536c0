"""mgie: MLLM-Guided Image Editing as a library (no Ray, no storage layer).

from mgie import MGIE
model = MGIE.from_preset("tiny", seed=0)          # or MGIE.from_pretrained("s3://bucket/mgie-7b")
result = model.edit([image], ["make it more healthy"], seeds=[13331])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The names are imported on first use (PEP 562): `import mgie.images` in a pipeline task must not import
# the model, transformers and diffusers (seconds of CPU per worker process) to size a working image.
_WHERE = {
    "PRESETS": ".config",
    "MGIEConfig": ".config",
    "preset": ".config",
    "preprocess_image": ".images",
    "reference_work_size": ".images",
    "ALL_PARTS": ".model",
    "EDIT": ".model",
    "EXPRESS": ".model",
    "MGIE": ".model",
    "EditResult": ".model",
    "Expression": ".model",
    "Summarizer": ".summarizer",
}

if TYPE_CHECKING:
    from .config import PRESETS, MGIEConfig, preset
    from .images import preprocess_image, reference_work_size
    from .model import ALL_PARTS, EDIT, EXPRESS, MGIE, EditResult, Expression
    from .summarizer import Summarizer


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'mgie' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "MGIE",
    "MGIEConfig",
    "EditResult",
    "Expression",
    "PRESETS",
    "preset",
    "preprocess_image",
    "reference_work_size",
    "ALL_PARTS",
    "EXPRESS",
    "EDIT",
    "Summarizer",
]
