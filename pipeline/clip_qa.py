"""The CLIP model of auto-QA (`--qa-clip PATH`): a folder in transformers' layout (`CLIPModel` config and
weights, tokenizer files, optionally `preprocessor_config.json`) on a local path or any fsspec URL. It is
never downloaded from a hub: `local_files_only` everywhere.

    clip_fingerprint(url, options)    sha256 over the folder's file names, sizes and contents (the run
                                      identity holds this, never the path: a changed CLIP is another run)
    check_clip(url, options)          on the driver before any work: the folder is there and loads -> its
                                      fingerprint; FileNotFoundError / ValueError name the flag and the cause
    ClipEmbedder(url, options, dev)   in the edit actor: unit-length image and text embeddings, batched on
                                      the device, from uint8 pixels already there

Remote folders are copied once to the local cache (mgie.checkpoint.copy_to_cache), keyed by fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

FLAG = "--qa-clip"


def _folder(url: str, options: dict[str, Any]):
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **options)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(
            f"{FLAG} {url}: no such folder (a CLIP model folder in transformers' layout: "
            f"config.json, the weights, the tokenizer files)"
        )
    if not fs.exists(f"{root}/config.json"):
        raise FileNotFoundError(f"{FLAG} {url}: no config.json there; not a transformers model folder")
    return fs, root


def clip_fingerprint(url: str, options: dict[str, Any] | None = None) -> str:
    """Names, sizes and content of every file in the folder; a large weight file by its first and last
    4 MiB (mgie.checkpoint.hash_file_edges' rule), so a 1.7 GB CLIP is fingerprinted in milliseconds."""
    from mgie.checkpoint import EDGE

    fs, root = _folder(url, options or {})
    h = hashlib.sha256()
    for path in sorted(p for p in fs.find(root) if not p.rsplit("/", 1)[-1].startswith(".")):
        size = fs.size(path)
        h.update(f"{path[len(root) :].lstrip('/')}:{size}".encode())
        with fs.open(path, "rb") as f:
            if size <= 2 * EDGE:
                h.update(f.read())
            else:
                h.update(f.read(EDGE))
                f.seek(size - EDGE)
                h.update(f.read(EDGE))
    return h.hexdigest()


def local_folder(url: str, options: dict[str, Any] | None = None) -> Path:
    """A local folder holding the CLIP at `url`: the folder itself, or its copy in the cache."""
    from mgie.checkpoint import cache_root, copy_to_cache, is_remote, local_path

    if not is_remote(url):
        return Path(local_path(url))
    fs, root = _folder(url, options or {})
    return copy_to_cache(fs, root, cache_root() / "clip" / clip_fingerprint(url, options)[:24])


def load_clip(folder: Path, device: Any = "cpu"):
    """(CLIPModel in eval mode on `device`, tokenizer, preprocess.Preprocess): the folder's preprocessor
    settings, or without `preprocessor_config.json` the model's own input size with OpenAI CLIP's
    normalisation (a 336 px CLIP must not be fed 224 px images)."""
    import dataclasses

    from transformers import AutoTokenizer, CLIPModel

    from pipeline.preprocess import clip_preprocess

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    pre = clip_preprocess(folder)
    if not (folder / "preprocessor_config.json").exists():
        side = int(model.config.vision_config.image_size)
        pre = dataclasses.replace(pre, resize=side, crop=side)
    return model.to(device).eval().requires_grad_(False), tokenizer, pre


def check_clip(url: str, options: dict[str, Any] | None = None) -> str:
    """Before any work: the folder exists and transformers loads it as a CLIP -> its fingerprint."""
    fingerprint = clip_fingerprint(url, options)
    try:
        load_clip(local_folder(url, options))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a folder it cannot load
        raise ValueError(
            f"{FLAG} {url}: not a CLIP model transformers can load ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        ) from None
    return fingerprint


class ClipEmbedder:
    """Unit-length CLIP embeddings on one device. Images are resized and cropped there as CLIP's own
    preprocessing does (shorter side to `resize`, bicubic with antialiasing, centre crop, normalise), so
    the pixels never leave the device. `dtype` None: float16 on CUDA (a QA figure needs no more than its
    third decimal, and half precision runs the towers several times faster there), float32 elsewhere."""

    def __init__(self, url: str, options: dict[str, Any] | None, device: Any, dtype: Any = None):
        import torch

        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.model, self.tokenizer, self.pre = load_clip(local_folder(url, options), self.device)
        self.model.to(self.dtype)
        self.max_tokens = min(77, int(self.model.config.text_config.max_position_embeddings))
        self.mean = torch.tensor(self.pre.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.pre.std, device=self.device).view(1, 3, 1, 1)

    def images(self, pixels):
        """(B, h, w, 3) uint8 on the device -> (B, D) float32 unit vectors."""
        import torch
        import torch.nn.functional as F

        x = pixels.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, h, w)
        h, w = x.shape[-2:]
        size = self.pre.resize  # torchvision's Resize(int): the short side becomes `size`, the long one truncated
        new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
        crop = self.pre.crop
        top, left = int(round((new[0] - crop) / 2.0)), int(round((new[1] - crop) / 2.0))
        x = ((x[..., top : top + crop, left : left + crop] - self.mean) / self.std).to(self.dtype)  # (B, 3, crop, crop)
        with torch.no_grad():
            pooled = self.model.vision_model(pixel_values=x).pooler_output  # (B, hidden)
            return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)  # (B, D)

    def texts(self, texts: Sequence[str]):
        """Texts (cut to CLIP's 77 tokens) -> (B, D) float32 unit vectors."""
        import torch
        import torch.nn.functional as F

        tokens = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        with torch.no_grad():
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            ).pooler_output
            return F.normalize(self.model.text_projection(pooled).float(), dim=-1)  # (B, D)
