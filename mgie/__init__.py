"""mgie: MLLM-Guided Image Editing as a library (no Ray, no storage layer).

from mgie import MGIE
model = MGIE.from_preset("tiny", seed=0)          # or MGIE.from_pretrained("s3://bucket/mgie-7b")
result = model.edit([image], ["make it more healthy"], seeds=[13331])
"""

from .config import PRESETS, MGIEConfig, preset
from .images import preprocess_image, reference_work_size
from .model import ALL_PARTS, EDIT, EXPRESS, MGIE, EditResult, Expression
from .summarizer import Summarizer

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
