"""The full-size output path against a plain decode-and-encode loop, per photo size (issue: a 12 MP photo's
output path within 2x the plain loop).

    python -m bench.full_res                  # 2 MP and 12 MP x 6 rows, one 48 MP row (make bench-full-res)
    python -m bench.full_res --quick          # 2 MP x 2 rows, smoke

Per size, generated photo-like JPEGs (a smooth gradient plus grain, q92) go through the real
`mgie-batch edit` (`python -m jobs.cli edit`, `--model tiny`, the `cpu` preset, the default
`--output-size original`: JPEG out at the photo's own size, q95 4:4:4) as a user starts it. From its ledger:
per-row milliseconds by stage (`ms_decode`: the decode stage's working image; `ms_encode`: the write stage's
full decode, detail transfer, JPEG encode and metadata) and rows/s of the whole run; from /proc, the peak
RSS of the processes while they run the write stage. The output path per row is ms_decode + ms_encode: the
CPU work a row costs outside the model. `--unit-rows 2` makes several units, so the write stage runs as
many tasks at once as the preset lets it (0.25 CPU each), as on a real job.

The plain loop, timed in the same run before and after the job (the mean of both): PIL decode, resize to
the same working size (Lanczos, as the product's working image), upsample back to full size (bicubic),
encode q95 with the same 4:4:4 chroma as the product's output. The loop with PIL's defaults (bicubic down,
4:2:0) is reported beside it. The transfer alone, against the first numpy implementation
(bench/transfer_reference.py), on one photo per size: speed, mean absolute difference and PSNR.
JSON under bench/results/ (`full-res-cpu.json`; `--quick`: `full-res-quick.json`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.args import bench_parser, save_figures

SIZES = {"2mp": (1632, 1224), "12mp": (4000, 3000), "48mp": (8000, 6000)}
WRITE_STAGE = "write_unit"  # Ray titles a worker "ray::...write_unit..." while it runs the write stage


def photo_jpegs(count: int, size: tuple[int, int], seed: int) -> list[bytes]:
    """`count` photo-like JPEGs of `size` (w, h): a smooth gradient per channel plus grain, q92."""
    from bench.images import synthetic_jpegs

    return synthetic_jpegs(count, size, seed=seed, quality=92, noise=6.0)


def plain_loop(
    jpegs: list[bytes], work: tuple[int, int], subsampling: int = 0, down=Image.Resampling.LANCZOS
) -> tuple[float, float]:
    """(wall ms, CPU ms) per photo: decode, resize to the working size, upsample back, encode q95."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    for data in jpegs:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        big = img.resize(work, down).resize(img.size, Image.Resampling.BICUBIC)
        big.save(io.BytesIO(), "JPEG", quality=95, subsampling=subsampling)
    return (
        (time.perf_counter() - t0) * 1000.0 / len(jpegs),
        (time.process_time() - cpu0) * 1000.0 / len(jpegs),
    )


def _kib(status: dict[str, str], key: str) -> int:
    """A /proc/<pid>/status size field ("1234 kB") in KiB; 0 when the process has none."""
    return int(status.get(key, "0 kB").split()[0])


class WriteStageMemory:
    """Samples, every 50 ms, the RSS of the processes whose title names the write stage; the peak seen
    and the largest VmHWM (a process's own lifetime peak) among them."""

    def __init__(self):
        self.peak_rss = 0
        self.peak_hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.05):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        title = f.read(400)
                    if not title.startswith(b"ray::") or WRITE_STAGE.encode() not in title:
                        continue
                    with open(f"/proc/{pid}/status") as f:
                        status = dict(line.split(":", 1) for line in f if ":" in line)
                except OSError:  # gone between the listing and the read
                    continue
                self.peak_rss = max(self.peak_rss, _kib(status, "VmRSS") * 1024)
                self.peak_hwm = max(self.peak_hwm, _kib(status, "VmHWM") * 1024)


def product_run(folder: Path, jpegs: list[bytes], resolution: int, unit_rows: int) -> dict:
    """The real `mgie-batch edit` on one shard of `jpegs`; its ledger means, rows/s and write-stage memory."""
    from pipeline.layout import OutputLayout
    from pipeline.ledger import read_ledger
    from pipeline.shards import write_samples

    shard = folder / "in.tar"
    shard.write_bytes(
        write_samples((f"r{i:04d}", {"jpg": data, "txt": b"make it warmer"}) for i, data in enumerate(jpegs))
    )
    out = folder / "out"
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--input",
        str(shard),
        "--output",
        str(out),
        "--model",
        "tiny",
        "--resources",
        "cpu",
        "--resolution",
        str(resolution),
        "--unit-rows",
        str(unit_rows),
        "--no-progress",
        "--json",
    ]
    t0 = time.perf_counter()
    with WriteStageMemory() as memory:
        done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    rows = read_ledger(str(out)).to_pylist()
    bad = [r for r in rows if r["status"] != "ok"]
    if bad or len(rows) != len(jpegs):
        raise RuntimeError(f"{len(rows)} ledger rows of {len(jpegs)}, not ok: {[(r['key'], r['error']) for r in bad]}")
    mean = lambda name: statistics.mean(r[name] or 0.0 for r in rows)  # noqa: E731
    stages = {name: round(mean(name), 1) for name in ("ms_decode", "ms_express", "ms_edit", "ms_encode")}
    # the CPU time the decode and write stages spent per row (the commit records' totals; process CPU time,
    # library threads included): what the rows cost the cores, however many tasks shared them
    commits = [json.loads(p.read_text()) for p in (out / OutputLayout.COMMITS).glob("*.json")]
    cpu = {f"cpu_ms_{k}": round(sum(c["ms"][f"cpu_{k}"] for c in commits) / len(rows), 1) for k in ("decode", "encode")}
    return {
        "rows": len(rows),
        "cpu_ms_per_row": cpu,
        "seconds": round(seconds, 1),
        "rows_per_s": round(len(rows) / seconds, 3),
        "ms_per_row": stages,
        "work_size": [rows[0]["work_width"], rows[0]["work_height"]],
        "output_size": [rows[0]["output_width"], rows[0]["output_height"]],
        "write_stage_peak_rss_mb": round(memory.peak_rss / 2**20),
        "write_stage_peak_hwm_mb": round(memory.peak_hwm / 2**20),
    }


def transfer_check(data: bytes, resolution: int) -> dict:
    """The product's transfer against the first implementation on one photo: ms each, MAD and PSNR."""
    from bench.detail_transfer import tone
    from bench.transfer_reference import transfer_edit_reference
    from mgie.images import work_image
    from pipeline.outputs import transfer_edit
    from tests.photos import psnr

    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # (H, W, 3)
    work = np.asarray(work_image(Image.fromarray(full), "fit", resolution))  # (h, w, 3)
    edited = tone(work)
    t0 = time.perf_counter()
    new = transfer_edit(full, work, edited)
    t1 = time.perf_counter()
    old = transfer_edit_reference(full, work, edited)
    t2 = time.perf_counter()
    return {
        "ms": round((t1 - t0) * 1000, 1),
        "reference_ms": round((t2 - t1) * 1000, 1),
        "mean_abs_diff": round(float(np.abs(new.astype(np.int16) - old).mean()), 4),
        "psnr_db": round(psnr(new, old), 2),
    }


def measure(name: str, count: int, args, work_dir: Path) -> dict:
    from mgie.images import work_size

    size = SIZES[name]
    jpegs = photo_jpegs(count, size, seed=len(name) * 7 + count)
    work = work_size(*size, "fit", args.resolution)
    before = plain_loop(jpegs, work)
    product = product_run(work_dir / name, jpegs, args.resolution, args.unit_rows)
    after = plain_loop(jpegs, work)
    plain, plain_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    wall_path = product["ms_per_row"]["ms_decode"] + product["ms_per_row"]["ms_encode"]
    path = product["cpu_ms_per_row"]["cpu_ms_decode"] + product["cpu_ms_per_row"]["cpu_ms_encode"]
    row = {
        "size": list(size),
        "megapixels": round(size[0] * size[1] / 1e6, 1),
        "jpeg_mb": round(statistics.mean(map(len, jpegs)) / 2**20, 2),
        **product,
        # the target's ratio: CPU time per row, the output path's against the plain loop's
        "output_path_ms_per_row": round(path, 1),
        "plain_loop_ms_per_row": round(plain_cpu, 1),
        "ratio": round(path / plain_cpu, 2),
        # the same in wall time: the write stage runs as many tasks as the preset lets it (0.25 CPU each), so
        # on a loaded machine a row's wall time holds other rows' work too
        "output_path_wall_ms_per_row": round(wall_path, 1),
        "plain_loop_wall_ms_per_row": round(plain, 1),
        "plain_loop_runs_wall_ms": [round(before[0], 1), round(after[0], 1)],
        "wall_ratio": round(wall_path / plain, 2),
        "plain_loop_pil_defaults_ms_per_row": round(
            plain_loop(jpegs, work, subsampling=2, down=Image.Resampling.BICUBIC)[1], 1
        ),
    }
    if not args.no_reference and name != "48mp":  # the reference needs ~4 GB at 48 MP
        row["transfer_vs_reference"] = transfer_check(jpegs[0], args.resolution)
    print(
        f"{name}: output path {path:7.1f} CPU ms/row (decode {product['cpu_ms_per_row']['cpu_ms_decode']}, "
        f"encode {product['cpu_ms_per_row']['cpu_ms_encode']}), plain loop {plain_cpu:7.1f}, ratio "
        f"{row['ratio']:.2f} (wall: {wall_path:.1f} / {plain:.1f} = {row['wall_ratio']:.2f}), "
        f"{product['rows_per_s']} rows/s, write stage peak RSS {product['write_stage_peak_rss_mb']} MB",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, quick="2 MP x 2 rows, no 48 MP row (smoke)")
    ap.add_argument("--rows", type=int, default=6, help="rows per size at 2 and 12 MP (default: 6)")
    ap.add_argument(
        "--resolution",
        type=int,
        default=32,
        help="working resolution (default: 32, the tiny model's own: the model costs nothing)",
    )
    ap.add_argument("--unit-rows", type=int, default=2)
    ap.add_argument("--no-48mp", action="store_true", help="leave out the 48 MP row")
    ap.add_argument("--no-reference", action="store_true", help="leave out the transfer-vs-reference check")
    ap.add_argument(
        "--note",
        default="shared 2-core machine: a long training job ran beside the benchmark",
        help="what the machine was doing, into the JSON",
    )
    args = ap.parse_args(argv)
    plan = {"2mp": 2} if args.quick else {"2mp": args.rows, "12mp": args.rows, **({} if args.no_48mp else {"48mp": 1})}
    work_dir = Path(tempfile.mkdtemp(prefix="bench-full-res-"))
    results = {}
    for name, count in plan.items():
        (work_dir / name).mkdir()
        results[name] = measure(name, count, args, work_dir)
    import cv2

    summary = {
        "benchmark": "full-res output path",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "host": platform.node(),
            "load_average": os.getloadavg(),
            "note": args.note,
        },
        "libraries": {"pillow": Image.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "note")},
        "sizes": results,
        "target": "ratio <= 2.0 at 2 MP and 12 MP",
        "met": all(results[n]["ratio"] <= 2.0 for n in ("2mp", "12mp") if n in results),
    }
    saved = save_figures(Path(args.out) / ("full-res-quick.json" if args.quick else "full-res-cpu.json"), summary)
    print(f"saved {saved}")
    return summary


if __name__ == "__main__":
    main()
