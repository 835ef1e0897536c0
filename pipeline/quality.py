"""Auto-QA of every edit: figures per ok row, computed in the edit actor right after diffusion, one batch at
a time on the device the edit ran on.

    qa_change    mean |edited - input| over pixels and channels, 8-bit levels, at the working size
    qa_ssim      SSIM of the luma (BT.601 weights), 7 x 7 uniform windows with clamped edges
    qa_clip_t    cos(E_img(edited), E_txt(expressive instruction))                          with --qa-clip
    qa_clip_dir  cos(E_img(edited) - E_img(input), E_txt(expressive) - E_txt(NEUTRAL_CAPTION)) with --qa-clip

A no-op edit has change ~0 and SSIM ~1; a picture the model replaced has a large change and a low SSIM.
`qa_clip_dir` is InstructPix2Pix's CLIP directional similarity (Brooks et al. 2023, after StyleGAN-NADA):
does the picture move, in CLIP space, the way the text moves from the input's caption to the output's?
Each embedding is normalised before the differences, as StyleGAN-NADA's code does. A row of the edit job
has no captions, so two texts stand for them:

  - output caption: the expressive instruction. MGIE writes it to describe the picture it wants ("the sky
    turns deep orange at sunset..."), which is what an output caption says; the terse user instruction is
    an imperative, further from the captions CLIP was trained on.
  - input caption: NEUTRAL_CAPTION, "a photo", true of every input. Not the empty text: CLIP embeds "" as
    a start and an end token only, far from every real caption, so the difference to it would be mostly
    "a caption vs none", the same for every row, and would swamp what the instruction asks for.

A no-op edit has no image direction, so its `qa_clip_dir` is 0 (cosine with a zero vector), below any
sensible `--qa-min-clip-dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.settings import setting

NEUTRAL_CAPTION = "a photo"
SSIM_RADIUS = 3  # 7 x 7 uniform windows (Wang et al. use an 11 x 11 Gaussian; uniform is the cheap variant)


@dataclass(frozen=True)
class QAChecks:
    """Auto-QA: the bounds that decide a row's `qa_pass` and the CLIP that measures `qa_clip_*`. Part of the
    run fingerprint (the identity's `outputs`)."""

    qa_min_change: float | None = setting(
        None,
        flag="--qa-min-change",
        help="auto-QA: an ok row whose mean change from its input (8-bit levels, at the working size) is below "
        "this gets qa_pass false, a likely no-op edit; its status stays ok (default: no bound; qa_change and "
        "qa_ssim are always recorded)",
    )
    qa_max_change: float | None = setting(
        None,
        flag="--qa-max-change",
        help="auto-QA: above this mean change qa_pass is false, the picture was likely replaced rather than "
        "edited (default: no bound)",
    )
    qa_clip: str | None = setting(
        None,
        flag="--qa-clip",
        metavar="PATH",
        help="auto-QA with CLIP: a local or fsspec folder holding a transformers CLIPModel with its tokenizer "
        "(never downloaded); records qa_clip_t (edit vs expressive instruction) and qa_clip_dir "
        "(InstructPix2Pix's directional similarity) per ok row; the weights' hash joins the run fingerprint "
        "(default: none, the two columns stay null)",
    )
    qa_min_clip_dir: float | None = setting(
        None,
        flag="--qa-min-clip-dir",
        help="auto-QA: below this CLIP directional similarity qa_pass is false, the edit did not go where the "
        "instruction points; needs --qa-clip (default: no bound)",
    )

    def __post_init__(self):
        low, high = self.qa_min_change, self.qa_max_change
        if (low is not None and low < 0) or (high is not None and high < 0) or (None not in (low, high) and low > high):
            raise ValueError(f"--qa-min-change {low} and --qa-max-change {high} must be >= 0 with min <= max")
        if self.qa_min_clip_dir is not None and not -1.0 <= self.qa_min_clip_dir <= 1.0:
            raise ValueError(f"--qa-min-clip-dir must be in -1..1 (a cosine), got {self.qa_min_clip_dir}")
        if self.qa_min_clip_dir is not None and not self.qa_clip:
            raise ValueError("--qa-min-clip-dir needs --qa-clip PATH, the CLIP model that measures it")

    def identity(self, clip_fingerprint: str | None) -> dict[str, Any]:
        """The bounds, and the CLIP by the hash of its weights (`clip_fingerprint`), not by its path: the same
        weights elsewhere are the same run. The CLIP entries only when CLIP QA is on, so runs from before it
        keep their fingerprint."""
        out = {"qa_min_change": self.qa_min_change, "qa_max_change": self.qa_max_change}
        if clip_fingerprint or self.qa_min_clip_dir is not None:
            out.update(qa_clip=clip_fingerprint, qa_min_clip_dir=self.qa_min_clip_dir)
        return out

    def qa_pass(self, change: float | None, clip_dir: float | None = None) -> bool | None:
        """Whether a row's QA figures are inside every bound set; None when no bound is set (not checked)."""
        if self.qa_min_change is None and self.qa_max_change is None and self.qa_min_clip_dir is None:
            return None
        # a figure missing (no edit actor measured it) is outside any bound set on it
        return (
            (self.qa_min_change is None or (change is not None and change >= self.qa_min_change))
            and (self.qa_max_change is None or (change is not None and change <= self.qa_max_change))
            and (self.qa_min_clip_dir is None or (clip_dir is not None and clip_dir >= self.qa_min_clip_dir))
        )


@dataclass(frozen=True)
class QASettings:
    """What the edit actors check with; picklable (the actors load the CLIP themselves)."""

    clip: str | None = None  # --qa-clip: a CLIP folder (local path or fsspec URL); None: change and SSIM only
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for `clip`


def change_and_ssim(inputs, edited):
    """(B, h, w, 3) uint8 tensors -> ((B,) mean absolute change in 8-bit levels, (B,) SSIM of the luma)."""
    import torch
    import torch.nn.functional as F

    r = SSIM_RADIUS
    x, y = inputs.float() - 128.0, edited.float() - 128.0  # centred: float32 sums of squares stay exact enough
    change = (y - x).abs().mean(dim=(1, 2, 3))  # (B,)
    luma = torch.tensor([0.299, 0.587, 0.114], device=x.device)
    a, b = (x @ luma)[:, None], (y @ luma)[:, None]  # (B, 1, h, w), luma - 128 (the weights sum to 1)

    # the mean over each (2r+1)^2 window, edges clamped, of all five maps at once; separable (a row pass,
    # then a column pass): 2 (2r+1) adds a pixel instead of (2r+1)^2
    k = 2 * r + 1
    maps = F.pad(torch.cat([a, b, a * a, b * b, a * b], dim=1), (r, r, r, r), mode="replicate")  # (B, 5, h+2r, w+2r)
    ma, mb, maa, mbb, mab = F.avg_pool2d(F.avg_pool2d(maps, (1, k), stride=1), (k, 1), stride=1).unbind(1)
    va, vb, cov = maa - ma * ma, mbb - mb * mb, mab - ma * mb  # (B, h, w); variances are shift-free
    ma, mb = ma + 128.0, mb + 128.0  # the luminance term needs the true means
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))  # (B, h, w)
    return change, ssim.mean(dim=(1, 2))


class QualityChecker:
    """Held by each edit actor; `score(batch)` after every diffusion batch."""

    def __init__(self, settings: QASettings, device: Any = "cpu"):
        import torch

        self.device = torch.device(device)
        self.clip = None
        if settings.clip:
            from pipeline.clip_qa import ClipEmbedder

            self.clip = ClipEmbedder(settings.clip, settings.storage_options, self.device)
            self.neutral = self.clip.texts([NEUTRAL_CAPTION])  # (1, D), the same for every row

    def score(self, batch: list[dict[str, Any]]) -> None:
        """Sets the QA figures on each row of one diffusion batch (rows of one working size, `edited` set)."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        # the edit's 8-bit pixels, exactly as written, go to the device: QA judges what ships, and the upload
        # is small (0.75 MB for a 512 x 512 row) next to the diffusion that made them
        inputs = torch.from_numpy(np.stack([s["pixels"] for s in batch])).to(self.device)  # (B, h, w, 3)
        edited = torch.from_numpy(np.stack([s["edited"] for s in batch])).to(self.device)  # (B, h, w, 3)
        with torch.no_grad():
            change, ssim = change_and_ssim(inputs, edited)
            figures = {"qa_change": change, "qa_ssim": ssim}
            if self.clip is not None:
                n = len(batch)
                images = self.clip.images(torch.cat([edited, inputs]))  # (2B, D): one vision pass for both
                texts = self.clip.texts([s.get("expressive_instruction") or s["instruction"] for s in batch])  # (B, D)
                figures["qa_clip_t"] = (images[:n] * texts).sum(dim=-1)  # (B,), unit vectors: the cosine
                figures["qa_clip_dir"] = F.cosine_similarity(images[:n] - images[n:], texts - self.neutral, dim=-1)
        on_host = {name: values.double().cpu().tolist() for name, values in figures.items()}  # one sync a batch
        for i, s in enumerate(batch):
            for name, values in on_host.items():
                s[name] = values[i]
