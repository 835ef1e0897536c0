"""Image checks and conversions between PIL images and the tensors the models take, and the working size.

Torch is imported by the conversions that make tensors, not by the module: the pipeline's decode and write
tasks use the working-size geometry and PIL alone, and a task process need not pay torch's import for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from .config import VisionConfig

if TYPE_CHECKING:
    import torch


def check_images(images: Sequence, name: str = "images") -> list[Image.Image]:
    if isinstance(images, (Image.Image, str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"{name} must be a list of PIL images, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError(f"{name} is empty: pass at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise TypeError(f"{name}[{i}] must be a PIL.Image.Image, got {type(img).__name__}")
        if img.mode != "RGB":
            raise ValueError(f"{name}[{i}] has mode {img.mode!r}; convert it to 'RGB' first (img.convert('RGB'))")
        if img.width < 1 or img.height < 1:
            raise ValueError(f"{name}[{i}] has size {img.size}")
    return list(images)


def check_texts(texts: Sequence, count: int | None, name: str = "instructions") -> list[str]:
    """A list of non-blank strings; `count` (when given) is the number of images they go with."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")
    if count is not None and len(texts) != count:
        raise ValueError(f"{name} has {len(texts)} entries but there are {count} images")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty")
    return list(texts)


def preprocess_image(image: Image.Image, resolution: int) -> Image.Image:
    """Centre-crops to a square and resizes to `resolution` (the reference's 512 x 512 working image)."""
    check_images([image], "image")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side == resolution:
        return square
    return square.resize((resolution, resolution), Image.Resampling.LANCZOS)


def clip_resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after CLIP's shortest-edge resize, as the reference's CLIPImageProcessor computes it: the short
    side becomes `size`, the long side `int(size * long / short)` (truncated, not rounded)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def reference_work_size(width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """The size the demo's InstructPix2Pix pipeline edits a raw image at: each side floored to a multiple
    of 8 (diffusers' VaeImageProcessor, vae_scale_factor 8), no crop, no square."""
    if width < multiple or height < multiple:
        raise ValueError(f"image {width}x{height} is smaller than {multiple} pixels on a side")
    return width - width % multiple, height - height % multiple


def to_clip_pixels(images: Sequence[Image.Image], cfg: VisionConfig) -> torch.Tensor:
    """CLIP preprocessing: shortest side to image_size (bicubic), centre crop, normalise. -> (B, 3, S, S)"""
    import torch

    size = cfg.image_size
    arrays = []
    for img in images:
        w, h = clip_resize_size(img.width, img.height, size)
        img = img.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        arrays.append(np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, S, S)
    mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def to_vae_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """uint8 RGB -> (B, 3, H, W) float32 in [-1, 1]; all images must share one size."""
    import torch

    sizes = {img.size for img in images}
    if len(sizes) != 1:
        raise ValueError(f"images in one diffusion batch must share a size, got {sorted(sizes)}")
    arrays = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) * 2.0 - 1.0  # (B, 3, H, W)


def to_float_images(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float32 in [0, 1], as diffusers' postprocess does."""
    return (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    arrays = (to_float_images(pixels) * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


# ------------------------------------------------------------------------------------ working size

RESIZE_MODES = ("fit", "crop", "reference")
# Both sides of a working image are multiples of 8, the SD VAE's downscale factor (tiny's 2 divides it).
# The UNet needs no more: diffusers' UNet2DConditionModel passes each up block the size of the matching
# down-block output when the latent is not a multiple of its 2**3, so a 75 x 50 latent (600 x 400 px)
# runs as well as a 64 x 64 one (tests/test_outputs.py runs an SD-depth UNet at such a size).
SIZE_MULTIPLE = 8


def fit_work_size(width: int, height: int, resolution: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Aspect ratio kept, the longer side = `resolution`, each side rounded to a multiple of `multiple`
    (at least one multiple): 900 x 600 at 512 -> 512 x 344."""
    scale = resolution / max(width, height)
    snap = lambda side: max(multiple, int(round(side * scale / multiple)) * multiple)  # noqa: E731
    return snap(width), snap(height)


def work_size(width: int, height: int, mode: str, resolution: int) -> tuple[int, int]:
    """(w, h) of the working image for an upright input of `width` x `height` under resize `mode`."""
    if mode == "fit":
        return fit_work_size(width, height, resolution)
    if mode == "crop":
        return resolution, resolution
    if mode == "reference":
        return reference_work_size(width, height, SIZE_MULTIPLE)
    raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")


def work_region(width: int, height: int, mode: str) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the input that the working image shows: the centre square
    for `crop`, the whole picture otherwise. The full-size output covers the same box."""
    if mode != "crop":
        return 0, 0, width, height
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def work_image(image: Image.Image, mode: str, resolution: int) -> Image.Image:
    """The working image of an upright RGB input: `crop` is the reference's centre square
    (`preprocess_image`); `fit` and `reference` resize the whole picture to `work_size` (Lanczos, as
    diffusers' VaeImageProcessor does)."""
    if mode == "crop":
        return preprocess_image(image, resolution)
    check_images([image], "image")
    size = work_size(image.width, image.height, mode, resolution)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
