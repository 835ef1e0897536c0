"""How to carry a working-size edit back to the input's full resolution: four methods, three edits.

    python -m bench.detail_transfer          # 2400 x 1600 photo-like image, working size 512 (fit)

Each edit is made twice: at the working size (what the model would hand back) and at full size (the
ideal). Each method turns the working-size edit into a full-size image; the figures are PSNR of its
downscale against the working-size edit (it must still be the model's edit), PSNR against the ideal, and
its Laplacian variance relative to the input's (fine detail kept). docs/pipeline.md section 10 holds the
table and the choice (`pipeline.outputs.transfer_edit`). Prints the figures and saves JSON under
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.transfer_reference import box_mean_table as box_mean
from bench.transfer_reference import upsample_float as _upsample
from mgie.images import work_image
from pipeline.outputs import transfer_edit
from tests.photos import laplacian_variance, photo, psnr


def tone(x: np.ndarray) -> np.ndarray:
    """Global: brighter midtones (gamma 0.8), warmer."""
    f = 255 * (x.astype(np.float32) / 255) ** 0.8 * np.array([1.05, 1.0, 0.92], np.float32)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def contrast(x: np.ndarray) -> np.ndarray:
    """Global: contrast x 0.7 around mid-grey, a little brighter."""
    return np.clip(np.rint((x.astype(np.float32) - 128) * 0.7 + 140), 0, 255).astype(np.uint8)


def painted(x: np.ndarray) -> np.ndarray:
    """Local: the tone edit plus a flat red disc over the middle (new content)."""
    y = tone(x).copy()
    h, w = y.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    y[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 4) ** 2] = (200, 40, 40)
    return y


def plain(full, work, edited):
    """Upsample the edit: the input's detail is lost."""
    return np.asarray(Image.fromarray(edited).resize(full.shape[1::-1], Image.Resampling.BICUBIC))


def difference(full, work, edited):
    """full + upsample(edited - work): all the input's detail, whatever the edit did to it."""
    h, w = full.shape[:2]
    out = full + _upsample(edited.astype(np.float32) - work.astype(np.float32), (w, h))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def guided(full, work, edited, radius: int = 2, eps: float = 1e-3 * 255**2):
    """The guided filter's a x full + b, fitted at the working size and upsampled (joint upsampling)."""
    x, y = work.astype(np.float64), edited.astype(np.float64)
    mx, my = box_mean(x, radius), box_mean(y, radius)
    a = (box_mean(x * y, radius) - mx * my) / (box_mean(x * x, radius) - mx * mx + eps)
    b = my - a * mx
    h, w = full.shape[:2]
    up = lambda c: _upsample(box_mean(c, radius).astype(np.float32), (w, h))  # noqa: E731
    return np.clip(np.rint(up(a) * full + up(b)), 0, 255).astype(np.uint8)


METHODS = {
    "plain upsampling": plain,
    "add the upsampled difference": difference,
    "guided filter": guided,
    "gain-scaled detail (ours)": transfer_edit,
}
EDITS = {"tone": tone, "contrast": contrast, "painted": painted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=2400)
    ap.add_argument("--height", type=int, default=1600)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    full = photo(args.width, args.height)  # (H, W, 3)
    work = np.asarray(work_image(Image.fromarray(full), "fit", args.resolution))  # (h, w, 3)
    base = laplacian_variance(full)
    results = []
    for edit_name, edit in EDITS.items():
        edited, ideal = edit(work), edit(full)
        for name, method in METHODS.items():
            t0 = time.perf_counter()
            out = method(full, work, edited)
            seconds = time.perf_counter() - t0
            down = np.asarray(Image.fromarray(out).resize(work.shape[1::-1], Image.Resampling.LANCZOS))
            row = {
                "edit": edit_name,
                "method": name,
                "psnr_down_vs_edit": round(psnr(down, edited), 2),
                "psnr_vs_ideal": round(psnr(out, ideal), 2),
                "laplacian_var": round(laplacian_variance(out) / base, 3),
                "ideal_laplacian_var": round(laplacian_variance(ideal) / base, 3),
                "seconds": round(seconds, 3),
            }
            results.append(row)
            print(
                f"{edit_name:9s} {name:30s} down {row['psnr_down_vs_edit']:6.2f} dB  ideal "
                f"{row['psnr_vs_ideal']:6.2f} dB  laplacian {row['laplacian_var']:.3f} "
                f"(ideal {row['ideal_laplacian_var']:.3f})  {seconds:.2f} s"
            )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"size": [args.width, args.height], "work": list(work.shape[1::-1]), "results": results}
    (out_dir / "detail-transfer.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
