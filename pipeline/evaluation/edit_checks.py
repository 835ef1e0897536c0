"""Does a trained model really edit? Direction checks per procedural edit kind, on held-out photos.

For each kind the check names one measurable property and the way it must move (brighten raises mean
luminance, black-and-white removes >= 70 % of the saturation, invert gives a negative correlation, ...); a kind
passes when (a) at least `min_right_way` of its rows move the right way by more than the kind's margin, (b) the
mean L1 distance to the procedural goal is at most `max_l1_ratio` of the unedited input's (the identity
baseline), and (c) the expressive text names the edit in at least `min_named` of the rows.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
from PIL import Image


def _luma(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (H, W) Rec. 601 luma."""
    return a @ np.array([0.299, 0.587, 0.114], np.float32)


def _saturation(a: np.ndarray) -> float:
    mx, mn = a.max(axis=-1), a.min(axis=-1)
    return float(np.mean((mx - mn) / np.maximum(mx, 1e-3)))


def _warmth(a: np.ndarray) -> float:
    return float(np.mean(a[..., 0] - a[..., 2]))  # R - B


def _opponent(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H * W, 2) chroma on the opponent axes R - G and (R + G) / 2 - B."""
    return np.stack([a[..., 0] - a[..., 1], (a[..., 0] + a[..., 1]) / 2 - a[..., 2]], axis=-1).reshape(-1, 2)


# the hue of a grey pixel through the sepia matrix (pipeline.training.procedural._sepia: rows R, G, B)
_SEPIA_TONE = np.array([0.393 + 0.769 + 0.189, 0.349 + 0.686 + 0.168, 0.272 + 0.534 + 0.131], np.float32)
_SEPIA_HUE = _opponent(_SEPIA_TONE[None, None])[0] / np.linalg.norm(_opponent(_SEPIA_TONE[None, None])[0])


def _sepia_alignment(a: np.ndarray) -> float:
    """1 when every pixel's chroma points at the sepia hue, -1 when all point away: the chroma-weighted cosine."""
    chroma = _opponent(a)
    return float((chroma @ _SEPIA_HUE).sum() / max(1e-6, np.linalg.norm(chroma, axis=1).sum()))


def _sepia_gap_closed(x: np.ndarray, y: np.ndarray) -> float:
    # relative to the gap left: an orange cat starts at 0.96 and a blue sky at -0.7; a sepia print ends near 1
    before = _sepia_alignment(x)
    return (_sepia_alignment(y) - before) / max(1e-3, 1.0 - before)


def _laplacian_var(a: np.ndarray) -> float:
    y = _luma(a)
    lap = -4 * y[1:-1, 1:-1] + y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:]
    return float(lap.var())


def _corner_to_centre(a: np.ndarray) -> float:
    y = _luma(a)
    h, w = y.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))  # 0 at the centre, sqrt 2 at the corners
    return float(y[r > 1.0].mean() / max(1e-3, y[r < 0.5].mean()))


@dataclass(frozen=True)
class DirectionCheck:
    """`moved(input, output)` -> a signed amount that is > `margin` when the edit went the right way."""

    kind: str
    what: str  # the property, for the report
    moved: Callable[[np.ndarray, np.ndarray], float]
    margin: float
    names: tuple[str, ...]  # words of which one must be in the expressive text


def _rel(f: Callable[[np.ndarray], float], sign: float) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda x, y: sign * (f(y) - f(x)) / max(1e-6, abs(f(x)))


CHECKS: dict[str, DirectionCheck] = {
    c.kind: c
    for c in (
        DirectionCheck(
            "brighten",
            "mean luminance rises",
            lambda x, y: float(_luma(y).mean() - _luma(x).mean()),
            0.03,
            ("bright", "light"),
        ),
        DirectionCheck(
            "darken",
            "mean luminance falls",
            lambda x, y: float(_luma(x).mean() - _luma(y).mean()),
            0.03,
            ("dark", "dim"),
        ),
        DirectionCheck(
            "contrast",
            "luminance std rises (relative)",
            _rel(lambda a: float(_luma(a).std()), 1.0),
            0.10,
            ("contrast",),
        ),
        DirectionCheck(
            "saturate", "mean saturation rises (relative)", _rel(_saturation, 1.0), 0.10, ("saturat", "vivid")
        ),
        DirectionCheck(
            "grayscale",
            "mean saturation drops by >= 70 %",
            _rel(_saturation, -1.0),
            0.70,
            ("black and white", "no color"),
        ),
        DirectionCheck(
            "sepia", "the hue turns to sepia's (>= 50 % of the gap closed)", _sepia_gap_closed, 0.5, ("sepia",)
        ),
        DirectionCheck("warmer", "R - B rises", lambda x, y: _warmth(y) - _warmth(x), 0.02, ("warm",)),
        DirectionCheck("cooler", "R - B falls", lambda x, y: _warmth(x) - _warmth(y), 0.02, ("cool", "blue")),
        DirectionCheck(
            "invert",
            "luminance correlation with the input < -0.3",
            lambda x, y: -float(np.corrcoef(_luma(x).ravel(), _luma(y).ravel())[0, 1]),
            0.30,
            ("invert", "negative"),
        ),
        DirectionCheck("blur", "Laplacian variance falls (relative)", _rel(_laplacian_var, -1.0), 0.30, ("blur",)),
        DirectionCheck(
            "sharpen", "Laplacian variance rises (relative)", _rel(_laplacian_var, 1.0), 0.20, ("sharp", "crisp")
        ),
        DirectionCheck(
            "vignette",
            "corner / centre luminance falls (relative)",
            _rel(_corner_to_centre, -1.0),
            0.10,
            ("vignette", "corner"),
        ),
    )
}


@dataclass(frozen=True)
class PassRule:
    min_right_way: float = 0.8  # fraction of rows moving the right way beyond the margin
    max_l1_ratio: float = 0.7  # L1 to the goal <= this x the identity baseline's (a >= 30 % improvement)
    min_named: float = 0.8  # fraction of rows whose expressive text names the edit


@dataclass
class KindResult:
    kind: str
    what: str
    rows: int
    right_way: float  # fraction of rows beyond the margin
    mean_moved: float
    l1_model: float
    l1_identity: float
    l1_ratio: float
    named: float
    passed: bool
    example_text: str = ""
    failures: list[str] = field(default_factory=list)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), np.float32) / 255.0  # (H, W, 3) in [0, 1]


def names_the_edit(kind: str, text: str) -> bool:
    """Whether an expressive text names the edit of `kind` (one of the words its check lists)."""
    return any(w in text.lower() for w in CHECKS[kind].names)


def judge(
    kind: str,
    inputs: list[np.ndarray],
    outputs: list[np.ndarray],
    goals: list[np.ndarray],
    texts: list[str],
    rule: PassRule = PassRule(),
) -> KindResult:
    check = CHECKS[kind]
    moved = np.array([check.moved(x, y) for x, y in zip(inputs, outputs)])
    l1_model = float(np.mean([np.abs(y - g).mean() for y, g in zip(outputs, goals)]))
    l1_identity = float(np.mean([np.abs(x - g).mean() for x, g in zip(inputs, goals)]))
    named = float(np.mean([names_the_edit(kind, t) for t in texts]))
    result = KindResult(
        kind,
        check.what,
        len(inputs),
        float(np.mean(moved > check.margin)),
        float(moved.mean()),
        l1_model,
        l1_identity,
        l1_model / max(1e-9, l1_identity),
        named,
        False,
        texts[0] if texts else "",
    )
    if result.right_way < rule.min_right_way:
        result.failures.append(f"{result.right_way:.0%} of rows move the right way (< {rule.min_right_way:.0%})")
    if result.l1_ratio > rule.max_l1_ratio:
        result.failures.append(f"L1 to goal is {result.l1_ratio:.2f} x identity's (> {rule.max_l1_ratio})")
    if result.named < rule.min_named:
        result.failures.append(f"{result.named:.0%} of texts name the edit (< {rule.min_named:.0%})")
    result.passed = not result.failures
    return result


def held_out_rows(shard_bytes: Iterable[bytes], kinds: Iterable[str] | None = None) -> list[dict]:
    """Triplet rows of `make-dataset --procedural` shards: input, goal (PIL), instruction, edit kind."""
    from pipeline.shards import iter_samples

    wanted = set(kinds) if kinds is not None else None
    rows = []
    for data in shard_bytes:
        for key, fields in iter_samples(io.BytesIO(data)):
            meta = json.loads(fields["json"])
            if wanted is None or meta["edit"] in wanted:
                rows.append(
                    {
                        "key": key,
                        "kind": meta["edit"],
                        "instruction": meta["instruction"],
                        "input": Image.open(io.BytesIO(fields["input.png"])).convert("RGB"),
                        "goal": Image.open(io.BytesIO(fields["goal.png"])).convert("RGB"),
                    }
                )
    return rows


def spread_rows(rows: list[dict], n: int) -> list[dict]:
    """About `n` of `rows`, every edit kind alike and each kind's rows spread over its photos. A plain stride
    would not do: the triplets come photo by photo, kind after kind, so a stride that shares a factor with the
    number of kinds keeps some kinds only."""
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    per = max(1, n // max(1, len(by_kind)))
    return [r for kind in sorted(by_kind) for r in by_kind[kind][:: max(1, len(by_kind[kind]) // per)][:per]]


def evaluate_directions(
    model, rows: list[dict], batch_size: int = 16, rule: PassRule = PassRule(), **edit_kwargs
) -> dict:
    """Edits every row with `model` (an MGIE) and judges each kind. -> {"kinds": {kind: KindResult dict}, ...}"""
    by_kind: dict[str, dict[str, list]] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        result = model.edit([r["input"] for r in chunk], [r["instruction"] for r in chunk], **edit_kwargs)
        for r, out, text in zip(chunk, result.images, result.expressive_instructions):
            size = out.size
            slot = by_kind.setdefault(r["kind"], {"inputs": [], "outputs": [], "goals": [], "texts": []})
            slot["inputs"].append(_arr(r["input"].resize(size, Image.Resampling.BICUBIC)))
            slot["outputs"].append(_arr(out))
            slot["goals"].append(_arr(r["goal"].resize(size, Image.Resampling.BICUBIC)))
            slot["texts"].append(text)
    kinds = {
        k: asdict(judge(k, v["inputs"], v["outputs"], v["goals"], v["texts"], rule)) for k, v in sorted(by_kind.items())
    }
    return {
        "rule": asdict(rule),
        "rows": len(rows),
        "kinds": kinds,
        "passed": sorted(k for k, v in kinds.items() if v["passed"]),
    }
