"""Training checkpoints, metrics log and loss curve under the run's output prefix (any fsspec URL).

<output>/<TrainLayout.RUN_RECORD>                 the run's identity; a resume with other settings is refused
<output>/checkpoints/step-00000040/               an mgie-batch checkpoint (`--model` loads it) plus
    trainer_state.pt                              optimizer, scheduler, step, epoch, metrics so far
    rng-rank<r>.pt                                each worker's torch / numpy / python RNG state
<output>/checkpoints/latest.json                  written last: a checkpoint exists once this names it
<output>/metrics.jsonl                            one JSON object per step (losses, lr, throughput)
<output>/loss_curve.png                           the loss curve (matplotlib if installed, else PIL)
"""

from __future__ import annotations

import io
import json
import math
import random
from typing import Any

import numpy as np
import torch

from pipeline.storage import Store

LATEST = "checkpoints/latest.json"


def checkpoint_dir(step: int) -> str:
    return f"checkpoints/step-{step:08d}"


def latest_checkpoint(store: Store) -> dict[str, Any] | None:
    """{"step", "path"} of the newest complete checkpoint, or None."""
    if not store.exists(LATEST):
        return None
    return json.loads(store.read_bytes(LATEST))


def _save_torch(store: Store, rel: str, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    store.write_atomic(rel, buf.getvalue())


def _load_torch(store: Store, rel: str) -> Any:
    # weights_only: a checkpoint is data; nothing in it may run code when loaded
    return torch.load(io.BytesIO(store.read_bytes(rel)), weights_only=True, map_location="cpu")


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_worker_rng(store: Store, step: int, rank: int) -> None:
    _save_torch(store, f"{checkpoint_dir(step)}/rng-rank{rank}.pt", rng_state())


def load_worker_rng(store: Store, path: str, rank: int) -> None:
    rel = f"{path}/rng-rank{rank}.pt"
    if store.exists(rel):  # a resume with more workers than the checkpoint had: the new ranks keep theirs
        set_rng_state(_load_torch(store, rel))


def save_checkpoint(
    store: Store,
    train_module,
    step: int,
    epoch: int,
    optimizer,
    scheduler,
    metrics: list[dict[str, Any]],
    steps_per_epoch: int,
    ema=None,
) -> str:
    """Rank 0: the model (MGIE.save_pretrained) and the trainer state. The caller writes `latest.json`
    (`commit_checkpoint`) once every rank has written its RNG file. With an EMA (pipeline.training.ema) the
    model files hold the averaged weights and the trainer state the online ones."""
    rel = checkpoint_dir(step)
    train_module.prepare_to_save()
    state = {
        "step": step,
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "steps_per_epoch": steps_per_epoch,
        "metrics": json.dumps(metrics),  # a string: weights_only loads it
    }
    if ema is not None:
        state.update(online=ema.online(), ema_updates=ema.updates)
        ema.swap()  # the average into the model for saving, then back
    try:
        train_module.model.save_pretrained(store.url.rstrip("/") + "/" + rel, store.options or None)
    finally:
        if ema is not None:
            ema.swap()
    _save_torch(store, f"{rel}/trainer_state.pt", state)
    return rel


def commit_checkpoint(store: Store, step: int, keep: int) -> None:
    """Names the checkpoint in latest.json (atomic), then drops all but the newest `keep` (0 keeps all)."""
    rel = checkpoint_dir(step)
    store.write_atomic(LATEST, json.dumps({"step": step, "path": rel}).encode())
    if keep > 0:
        steps = sorted(int(n.split("-")[1]) for n in store.list("checkpoints") if n.startswith("step-"))
        for old in steps[:-keep]:
            if old != step:
                try:
                    store.fs.rm(store.path(checkpoint_dir(old)), recursive=True)
                except FileNotFoundError:
                    pass


def load_trainer_state(store: Store, path: str) -> dict[str, Any]:
    state = _load_torch(store, f"{path}/trainer_state.pt")
    state["metrics"] = json.loads(state["metrics"])
    return state


def write_metrics(store: Store, rows: list[dict[str, Any]]) -> None:
    """Rewrites metrics.jsonl whole: a resume replaces the steps after its checkpoint, never appends twice."""
    store.write_atomic("metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    if rows:
        store.write_atomic("loss_curve.png", loss_curve_png(rows))


def loss_curve_png(rows: list[dict[str, Any]], size: tuple[int, int] = (640, 400)) -> bytes:
    """The total, instruction and edit losses against the step, as PNG bytes."""
    # positive values only: the curve has a log-scale y (a loss falls by orders of magnitude), and a stage that
    # does not compute a loss logs it as 0 (the autoencoder's L_ins)
    series = {
        name: [(r["step"], r[name]) for r in rows if r.get(name) is not None and math.isfinite(r[name]) and r[name] > 0]
        for name in ("loss", "ins", "edit")
    }
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
        for name, pts in series.items():
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss per step (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="loss")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return buf.getvalue()
    except ImportError:
        return _pil_curve(series, size)


def _pil_curve(series: dict[str, list[tuple[float, float]]], size: tuple[int, int]) -> bytes:
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 50, 20, 20, 30
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text((4, top), f"{y1:.3g}", fill="black")
    draw.text((4, h - bottom - 10), f"{y0:.3g}", fill="black")
    draw.text((left, h - bottom + 8), f"step {x0:g}", fill="black")
    draw.text((w - right - 60, h - bottom + 8), f"step {x1:g}", fill="black")
    colours = {"loss": "black", "ins": "royalblue", "edit": "darkorange"}
    for i, (name, line) in enumerate(series.items()):
        if len(line) > 1:
            draw.line([xy(*p) for p in line], fill=colours[name], width=2)
        draw.text((left + 10 + 60 * i, top + 4), name, fill=colours[name])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
