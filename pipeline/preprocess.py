"""How CLIP and DINO see an image: the shorter side resized, a centre crop, the model's normalisation.

Auto-QA's CLIP (pipeline.clip_qa) and the evaluation metrics (pipeline.evaluation.metrics) share these
definitions, so a CLIP score means the same in both places.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Preprocess:
    """Shorter side to `resize` (bicubic), centre crop `crop`, normalise: torchvision's Resize(int) +
    CenterCrop + Normalize, the transforms MagicBrush applies before CLIP and DINO."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = []
        for img in images:
            w, h = img.size
            # torchvision's Resize(int): the short side becomes `resize`, the long side is truncated
            if w <= h:
                size = (self.resize, int(self.resize * h / w))
            else:
                size = (int(self.resize * w / h), self.resize)
            img = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
            left, top = int(round((size[0] - self.crop) / 2.0)), int(round((size[1] - self.crop) / 2.0))
            img = img.crop((left, top, left + self.crop, top + self.crop))
            arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, crop, crop)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std


def clip_preprocess(directory: Path) -> Preprocess:
    """The CLIP directory's own preprocessor settings (size, crop, mean, std), else OpenAI CLIP's."""
    path = directory / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    size = cfg.get("size", 224)
    size = size.get("shortest_edge", 224) if isinstance(size, dict) else int(size)
    crop = cfg.get("crop_size", size)
    crop = crop.get("height", size) if isinstance(crop, dict) else int(crop)
    return Preprocess(size, crop, tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD)))
