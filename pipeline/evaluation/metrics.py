"""Image-editing metrics: L1, SSIM, LPIPS, CLIP-I, CLIP-T and DINO, as MagicBrush's evaluation defines them.

Every metric compares the edited image with the goal image of its row (CLIP-T: with a text). The
definitions, and where each comes from, are in docs/metrics.md. In short:

    l1      mean |edited - goal| over pixels and channels, both in [0, 1], edited resized to the goal's size
    ssim    Gaussian-window SSIM (11 x 11, sigma 1.5, K1 0.01, K2 0.03) on [0, 1] RGB, mean over channels
    lpips   LPIPS v0.1 with the AlexNet backbone (lower = closer)
    clip_i  cosine of CLIP image embeddings of edited and goal (MagicBrush: ViT-B/32; MGIE's "CVS")
    clip_t  cosine of the CLIP image embedding of the edited image and the CLIP text embedding of the
            row's caption (the goal's caption), or of the instruction when the row has no caption
    dino    cosine of DINO ViT-S/16 [CLS] embeddings of edited and goal

The formulas come from libraries where one exists: torchmetrics' SSIM and LPIPS (its calibrated linear
layers), transformers' CLIP and ViT. Metric models load from local paths (HF directories for CLIP and
DINO, a torchvision-layout AlexNet state dict for LPIPS); `MetricSuite.tiny(seed)` builds random models
of the same architectures in code for tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.evaluation.metric_names import ALL_METRICS
from pipeline.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess, clip_preprocess

MODEL_METRICS = {"lpips": "lpips", "clip_i": "clip", "clip_t": "clip", "dino": "dino"}
LOWER_IS_BETTER = frozenset({"l1", "lpips"})


# ---------------------------------------------------------------------------------------------- config


@dataclass
class MetricsConfig:
    """Which metrics to compute and where their models come from (paths are given by job flags)."""

    metrics: tuple[str, ...] = ALL_METRICS
    clip: str | None = None  # HF CLIP directory (MagicBrush uses ViT-B/32)
    dino: str | None = None  # HF ViT directory holding DINO ViT-S/16 weights (e.g. a dino-vits16 export)
    lpips_backbone: str | None = None  # torchvision AlexNet state dict (.pth), features.* keys
    tiny_seed: int | None = None  # random tiny metric models built in code (tests), instead of the paths
    dino_preprocess: Preprocess = field(default_factory=lambda: Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD))
    ssim_kernel: int = 11
    ssim_sigma: float = 1.5
    text_max_tokens: int = 77  # CLIP's context length

    def validate(self) -> "MetricsConfig":
        unknown = sorted(set(self.metrics) - set(ALL_METRICS))
        if unknown or not self.metrics:
            raise ValueError(f"metrics must be a non-empty subset of {list(ALL_METRICS)}, got {list(self.metrics)}")
        if self.tiny_seed is None:
            flags = {"clip": "--clip", "dino": "--dino", "lpips": "--lpips-backbone"}
            paths = {"clip": self.clip, "dino": self.dino, "lpips": self.lpips_backbone}
            missing = sorted(
                {flags[MODEL_METRICS[m]] for m in self.metrics if m in MODEL_METRICS and not paths[MODEL_METRICS[m]]}
            )
            if missing:
                raise ValueError(
                    f"metrics {list(self.metrics)} need model paths: give {', '.join(missing)} "
                    f"(or drop those metrics with --metrics)"
                )
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- plain metrics


def to_unit_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """uint8 RGB images of one size -> (B, 3, H, W) float32 in [0, 1] (torchvision's ToTensor)."""
    arrays = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2)


def match_size(edited: Image.Image, goal: Image.Image) -> Image.Image:
    """The edited image at the goal's size (bicubic), as MagicBrush compares them."""
    edited = edited.convert("RGB")
    return edited if edited.size == goal.size else edited.resize(goal.size, Image.Resampling.BICUBIC)


def pair_tensors(edited: Image.Image, goal: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited at the goal's size, goal) as (1, 3, H, W) float32 in [0, 1]: what L1, SSIM and LPIPS compare."""
    return to_unit_tensor([match_size(edited, goal)]), to_unit_tensor([goal])


def l1_distance(edited: Image.Image, goal: Image.Image) -> float:
    return _l1(*pair_tensors(edited, goal))


def _l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.l1_loss(a, b))


def ssim(edited: Image.Image, goal: Image.Image, kernel: int = 11, sigma: float = 1.5) -> float:
    return _ssim(*pair_tensors(edited, goal), kernel, sigma)


def _ssim(a: torch.Tensor, b: torch.Tensor, kernel: int = 11, sigma: float = 1.5) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    if min(b.shape[-2:]) < kernel:
        size = (b.shape[-1], b.shape[-2])  # (W, H), as PIL gives a size
        raise ValueError(f"SSIM needs images of at least {kernel} x {kernel} pixels, the goal is {size}")
    value = structural_similarity_index_measure(
        a.double(),
        b.double(),
        gaussian_kernel=True,
        kernel_size=kernel,
        sigma=sigma,
        data_range=1.0,
        k1=0.01,
        k2=0.03,
    )
    return float(value)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (B, D) embeddings -> (B,), clamped to [-1, 1] against rounding."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------- LPIPS


def alexnet_features() -> torch.nn.Sequential:
    """AlexNet's convolutional trunk with torchvision's layer indices (so its state dict loads as is)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def load_alexnet_features(path: str) -> torch.nn.Sequential:
    """Reads a torchvision AlexNet checkpoint (`features.N.*` keys; classifier keys are ignored) or a
    trunk-only state dict (`N.*`) with torch.load(weights_only=True)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    trunk = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")} or state
    features = alexnet_features()
    missing, unexpected = features.load_state_dict(trunk, strict=False)
    if missing or unexpected:
        raise KeyError(f"{path}: not an AlexNet trunk; missing {sorted(missing)}, unexpected {sorted(unexpected)[:10]}")
    return features


@contextlib.contextmanager
def _backbone_source(features: torch.nn.Sequential):
    """torchmetrics builds LPIPS's backbone through torchvision; hand it ours instead (no torchvision, no
    download) while its LPIPS module is constructed. Everything else is torchmetrics' own LPIPS."""
    import torchmetrics.functional.image.lpips as tm_lpips

    original = tm_lpips._get_tv_model_features
    tm_lpips._get_tv_model_features = lambda net, pretrained=False: features
    try:
        yield tm_lpips
    finally:
        tm_lpips._get_tv_model_features = original


def build_lpips(features: torch.nn.Sequential) -> torch.nn.Module:
    """LPIPS v0.1 (AlexNet) with torchmetrics' calibrated linear layers over the given trunk."""
    with _backbone_source(features) as tm_lpips:
        net = tm_lpips._NoTrainLpips(net="alex", pretrained=True, pnet_rand=True)
    return net.eval().requires_grad_(False)


LPIPS_MIN_SIZE = 32  # AlexNet's strides leave no feature map below this


# ---------------------------------------------------------------------------------------------- tiny models


def build_tiny_clip(seed: int):
    """A random CLIP (text + vision towers) and an in-process byte-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(byte_chars))}
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return CLIPModel(config), tokenizer, Preprocess(32, 32, CLIP_MEAN, CLIP_STD)


def build_tiny_dino(seed: int):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(seed + 1)
    return ViTModel(config, add_pooling_layer=False), Preprocess(36, 32, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------------------------------------- suite


def _files_fingerprint(path: str) -> str:
    """sha256 over the names, sizes and content (first and last 4 MiB of a large file: see
    mgie.checkpoint.hash_file_edges) of the files under `path` (or of the one file `path`)."""
    from mgie.checkpoint import hash_file_edges

    p = Path(path)
    files = sorted(x for x in (p.rglob("*") if p.is_dir() else [p]) if x.is_file() and not x.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{f.stat().st_size}".encode())
        hash_file_edges(h, f)
    return h.hexdigest()


def suite_fingerprint(config: MetricsConfig) -> str:
    """Identity of a metric setup: settings plus a content hash of each model used, not its path (the
    same weights copied elsewhere are the same setup). Cheap: loads no model."""
    config.validate()
    need = {MODEL_METRICS[m] for m in config.metrics if m in MODEL_METRICS}
    models = {}
    if config.tiny_seed is None:
        paths = {"clip": config.clip, "dino": config.dino, "lpips": config.lpips_backbone}
        models = {name: _files_fingerprint(paths[name]) for name in sorted(need)}
    settings = {k: v for k, v in config.to_dict().items() if k not in ("clip", "dino", "lpips_backbone")}
    blob = json.dumps({"settings": settings, "models": models}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class MetricSuite:
    """Holds the metric models one stage needs and scores batches of (edited, goal, text) rows."""

    def __init__(self, config: MetricsConfig, device: str | torch.device = "cpu"):
        self.config = config.validate()
        self.metrics = tuple(config.metrics)
        self.device = torch.device(device)
        need = {MODEL_METRICS[m] for m in self.metrics if m in MODEL_METRICS}
        self.clip = self.clip_tokenizer = self.clip_pre = self.dino = self.lpips = None
        seed = config.tiny_seed
        if "clip" in need:
            if seed is not None:
                self.clip, self.clip_tokenizer, self.clip_pre = build_tiny_clip(seed)
            else:
                from transformers import AutoTokenizer, CLIPModel

                self.clip = CLIPModel.from_pretrained(config.clip, local_files_only=True)
                self.clip_tokenizer = AutoTokenizer.from_pretrained(config.clip, local_files_only=True)
                self.clip_pre = clip_preprocess(Path(config.clip))
            self.clip.to(self.device).eval().requires_grad_(False)
        if "dino" in need:
            if seed is not None:
                self.dino, self.dino_pre = build_tiny_dino(seed)
            else:
                from transformers import ViTModel

                self.dino = ViTModel.from_pretrained(config.dino, add_pooling_layer=False, local_files_only=True)
                self.dino_pre = config.dino_preprocess
            self.dino.to(self.device).eval().requires_grad_(False)
        if "lpips" in need:
            if seed is not None:
                torch.manual_seed(seed + 2)
                features = alexnet_features()
            else:
                features = load_alexnet_features(config.lpips_backbone)
            self.lpips = build_lpips(features).to(self.device)
        self._fingerprint: str | None = None  # hashing the model files is left to the first fingerprint()

    @classmethod
    def tiny(cls, seed: int = 0, metrics: Sequence[str] = ALL_METRICS) -> "MetricSuite":
        return cls(MetricsConfig(metrics=tuple(metrics), tiny_seed=seed))

    def fingerprint(self) -> str:
        """suite_fingerprint of this suite's config, computed on first use (actors that only score never
        read the model files for it)."""
        if self._fingerprint is None:
            self._fingerprint = suite_fingerprint(self.config)
        return self._fingerprint

    # ------------------------------------------------------------------ embeddings

    @torch.no_grad()
    def clip_image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.clip_pre(images).to(self.device)  # (B, 3, S, S)
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output  # (B, hidden)
        return self.clip.visual_projection(pooled)  # (B, projection_dim)

    @torch.no_grad()
    def clip_text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.clip_tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.config.text_max_tokens,
            return_tensors="pt",
        )
        pooled = self.clip.text_model(
            input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
        ).pooler_output
        return self.clip.text_projection(pooled)  # (B, projection_dim)

    @torch.no_grad()
    def dino_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.dino_pre(images).to(self.device)  # (B, 3, S, S)
        return self.dino(pixel_values=pixels).last_hidden_state[:, 0]  # (B, hidden): [CLS] after the final norm

    def lpips_distance(self, edited: Image.Image, goal: Image.Image) -> float:
        return self._lpips(*pair_tensors(edited, goal))

    @torch.no_grad()
    def _lpips(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """LPIPS of (1, 3, H, W) tensors in [0, 1] (see pair_tensors)."""
        if min(b.shape[-2:]) < LPIPS_MIN_SIZE:
            size = (b.shape[-1], b.shape[-2])  # (W, H), as PIL gives a size
            raise ValueError(f"LPIPS needs images of at least {LPIPS_MIN_SIZE} px a side, the goal is {size}")
        return float(self.lpips(a.to(self.device), b.to(self.device), normalize=True).reshape(()))

    # ------------------------------------------------------------------ scoring

    def score(
        self, edited: Sequence[Image.Image], goals: Sequence[Image.Image | None], texts: Sequence[str | None]
    ) -> dict[str, list[float | None]]:
        """Per-row metric values. A goal metric is None where the row has no goal image; CLIP-T is None
        where it has no text. Rows must already be valid images (decode errors are caught upstream)."""
        n = len(edited)
        if len(goals) != n or len(texts) != n:
            raise ValueError(f"score: {n} edited images, {len(goals)} goals, {len(texts)} texts")
        out: dict[str, list[float | None]] = {m: [None] * n for m in self.metrics}
        with_goal = [i for i in range(n) if goals[i] is not None]
        with_text = [i for i in range(n) if texts[i] and texts[i].strip()]
        if any(m in out for m in ("l1", "ssim", "lpips")):
            for i in with_goal:
                a, b = pair_tensors(edited[i], goals[i])  # (1, 3, H, W) each, once for all three
                if "l1" in out:
                    out["l1"][i] = _l1(a, b)
                if "ssim" in out:
                    out["ssim"][i] = _ssim(a, b, self.config.ssim_kernel, self.config.ssim_sigma)
                if "lpips" in out:
                    out["lpips"][i] = self._lpips(a, b)
        # CLIP embeddings of the edited images, once for the rows of both CLIP-I and CLIP-T
        clip_rows = sorted(set(with_goal if "clip_i" in out else []) | set(with_text if "clip_t" in out else []))
        position: dict[int, int] = {}  # row -> its index in embeds
        if clip_rows:
            embeds = self.clip_image_embeds([edited[i] for i in clip_rows])  # (len(clip_rows), D)
            position = {i: k for k, i in enumerate(clip_rows)}
        if with_goal and "clip_i" in out:
            sims = cosine(
                embeds[[position[i] for i in with_goal]], self.clip_image_embeds([goals[i] for i in with_goal])
            )
            for i, s in zip(with_goal, sims.tolist()):
                out["clip_i"][i] = s
        if with_goal and "dino" in out:
            sims = cosine(
                self.dino_embeds([edited[i] for i in with_goal]), self.dino_embeds([goals[i] for i in with_goal])
            )
            for i, s in zip(with_goal, sims.tolist()):
                out["dino"][i] = s
        if with_text and "clip_t" in out:
            sims = cosine(
                embeds[[position[i] for i in with_text]], self.clip_text_embeds([texts[i] for i in with_text])
            )
            for i, s in zip(with_text, sims.tolist()):
                out["clip_t"][i] = s
        return out


def aggregate(values: dict[str, Sequence[float | None] | np.ndarray]) -> dict[str, dict[str, float | int | None]]:
    """Mean, standard deviation and count per metric over the rows that have a value (None / NaN: none)."""
    table = {}
    for name, column in values.items():
        xs = np.asarray(column, dtype=np.float64)  # None becomes NaN
        xs = xs[np.isfinite(xs)]
        table[name] = {
            "mean": float(xs.mean()) if xs.size else None,
            "std": float(xs.std()) if xs.size else None,
            "count": int(xs.size),
            "better": "lower" if name in LOWER_IS_BETTER else "higher",
        }
    return table


def markdown_table(table: dict[str, dict], title: str = "Metrics") -> str:
    lines = [f"## {title}", "", "| metric | mean | std | rows | better |", "|---|---:|---:|---:|---|"]
    for name, row in table.items():
        mean = "n/a" if row["mean"] is None else f"{row['mean']:.4f}"
        std = "n/a" if row["std"] is None else f"{row['std']:.4f}"
        lines.append(f"| {name} | {mean} | {std} | {row['count']} | {row['better']} |")
    return "\n".join(lines) + "\n"
