"""P3: the edit pipeline's own overhead, measured against a plain Python loop doing the same I/O.

    python -m bench.pipeline                 # 4 shards x 256 rows, 3 rounds (make bench-cpu)
    python -m bench.pipeline --quick         # 2 shards x 16 rows, 1 round (smoke, runs in make test)
    python -m bench.pipeline --variant read_cpus=0.5,write_cpus=0.5   # also a changed `cpu` preset, same rounds

Both sides read the same WebDataset shards from a local folder, decode each JPEG, centre-crop and resize
it to the working resolution, encode a PNG + per-sample JSON into an output tar per shard and write a
Parquet ledger. The pipeline side is the real `edit` job (`pipeline.run.run_edit`: Ray Data plan, actor
pools, ledger, commit records, summary) with the `noop` model, which hands every image back unchanged, so
what remains is the pipeline's own cost. Ray is started before timing (a cluster is normally up); its
start-up time is reported on its own. Two pipeline rates: end to end (plan, actor start-up included) and
steady (rows committed after the first commit over the time from the first to the last commit). Rounds
alternate plain / pipeline so drift hits both alike.
Prints the figures and saves JSON under bench/results/.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bench.args import bench_parser, save_figures
from mgie import preprocess_image

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_shards(folder: Path, shards: int, rows: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """`shards` WebDataset tars of `rows` smooth synthetic JPEGs (no added noise) + one instruction each."""
    from bench.images import synthetic_jpegs
    from pipeline.shards import write_samples

    paths = []
    for s in range(shards):
        path = folder / f"shard-{s:03d}.tar"
        jpegs = synthetic_jpegs(rows, size, seed=seed * 1000 + s, quality=90, noise=0)
        path.write_bytes(
            write_samples(
                (f"s{s:03d}r{r:05d}", {"jpg": jpg, "txt": b"make it brighter"}) for r, jpg in enumerate(jpegs)
            )
        )
        paths.append(path)
    return paths


def plain_loop(shards: list[Path], out: Path, resolution: int) -> int:
    """What a hand-written script would do: one shard after the other, one row after the other."""
    (out / "shards").mkdir(parents=True)
    (out / "ledger").mkdir()
    rows = 0
    for shard in shards:
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        ledger = []
        with tarfile.open(out / "shards" / shard.name, "w") as dst:
            for key, sample in samples.items():
                start = time.perf_counter()
                image = preprocess_image(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), resolution)
                instruction = sample["txt"].decode()
                png = io.BytesIO()
                image.save(png, "PNG")
                meta = json.dumps(
                    {"key": key, "instruction": instruction, "expressive_instruction": instruction}
                ).encode()
                for name, data in ((f"{key}.png", png.getvalue()), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    dst.addfile(info, io.BytesIO(data))
                ledger.append(
                    {
                        "key": key,
                        "source_shard": str(shard),
                        "status": "ok",
                        "instruction": instruction,
                        "ms": (time.perf_counter() - start) * 1000,
                    }
                )
        pq.write_table(pa.Table.from_pylist(ledger), out / "ledger" / f"{shard.stem}.parquet")
        rows += len(ledger)
    return rows


def pipeline_run(folder: Path, shards: int, out: Path, resolution: int, unit_rows: int, resources: str = "cpu") -> dict:
    from pipeline.config import EditConfig
    from pipeline.editors import ModelSpec
    from pipeline.run import run_edit

    pattern = f"{folder}/shard-{{000..{shards - 1:03d}}}.tar"
    return run_edit(
        EditConfig.of(
            input=pattern,
            output=str(out),
            model=ModelSpec("noop"),
            resolution=resolution,
            unit_rows=unit_rows,
            resources=resources,
            progress=False,
            # the plain loop's work: centre crop, PNG at the working size
            resize="crop",
            output_size="work",
            image_format="png",
        )
    )


def timed_run(folder: Path, out: Path, args, total: int, resources: str) -> tuple[float, float | None, dict]:
    """One pipeline run: (rows/s end to end, rows/s once the actors are up, seconds to each driver step)."""
    from bench.scaling import steady_rate
    from pipeline.storage import Store

    t0 = time.perf_counter()
    summary = pipeline_run(folder, args.shards, out, args.resolution, args.unit_rows, resources)
    rate = total / (time.perf_counter() - t0)
    if summary["ok"] != total:
        raise RuntimeError(f"{out.name} ({resources}): pipeline {summary} of {total}")
    return rate, steady_rate(Store.open(str(out), None))[0], summary["startup_s"]


def register_variant(change: str) -> str:
    """The cpu preset with `change` (`field=value,...` of pipeline.config.Resources) as a preset of its own,
    so the real job runs it by name."""
    import dataclasses

    from pipeline.config import RESOURCE_PRESETS

    fields = dict(part.split("=", 1) for part in change.split(","))
    base = RESOURCE_PRESETS["cpu"]
    typed = {k: type(getattr(base, k))(v) for k, v in fields.items()}
    RESOURCE_PRESETS["cpu-variant"] = dataclasses.replace(base, name="cpu-variant", **typed)
    return "cpu-variant"


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, quick="2 shards x 16 rows, 1 round (smoke)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rows-per-shard", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--unit-rows", type=int, default=64)
    ap.add_argument(
        "--variant",
        default="",
        help="fields of the cpu preset to change, e.g. read_cpus=0.5,write_cpus=0.5: that pipeline runs in the "
        "same rounds, after the preset's (default: none)",
    )
    args = ap.parse_args(argv)
    variant = register_variant(args.variant) if args.variant else None
    if args.quick:
        args.shards, args.rows_per_shard, args.rounds, args.resolution, args.unit_rows = 2, 16, 1, 64, 8

    from pipeline.cluster import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    (work / "in").mkdir()
    shards = make_shards(work / "in", args.shards, args.rows_per_shard, (384, 288))
    total = args.shards * args.rows_per_shard
    t0 = time.perf_counter()
    ensure_ray()
    ray_start = time.perf_counter() - t0

    plain, piped, steady, startup = [], [], [], []
    variant_rates, variant_steady, variant_startup = [], [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        n = plain_loop(shards, work / f"plain-{r}", args.resolution)
        plain.append(n / (time.perf_counter() - t0))
        if n != total:
            raise RuntimeError(f"round {r}: plain wrote {n} rows of {total}")

        for rates, steadies, startups, out, resources in (
            (piped, steady, startup, work / f"pipe-{r}", "cpu"),
            *([(variant_rates, variant_steady, variant_startup, work / f"variant-{r}", variant)] if variant else []),
        ):
            rate, steady_now, startup_now = timed_run(work / "in", out, args, total, resources)
            rates.append(rate)
            steadies.append(steady_now)
            startups.append(startup_now)
        if variant:
            print(f"round {r}: variant ({args.variant}) {variant_rates[-1]:7.1f} rows/s end to end", flush=True)
        print(
            f"round {r}: plain {plain[-1]:7.1f} rows/s   pipeline {piped[-1]:7.1f} rows/s end to end, "
            f"{steady[-1] or float('nan'):7.1f} rows/s once the actors are up",
            flush=True,
        )

    result = {
        "benchmark": "pipeline-overhead (P3)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "host": platform.node()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": total,
        "ray_start_seconds": ray_start,
        "plain_rows_per_s": plain,
        "pipeline_rows_per_s": piped,
        "pipeline_steady_rows_per_s": steady,
        "pipeline_startup_s": startup,
        "plain_median": statistics.median(plain),
        "pipeline_median": statistics.median(piped),
    }
    result["pipeline_over_plain"] = result["pipeline_median"] / result["plain_median"]
    steady_ok = [x for x in steady if x]
    result["pipeline_steady_over_plain"] = statistics.median(steady_ok) / result["plain_median"] if steady_ok else None
    if variant:
        result["variant"] = {
            "change": args.variant,
            "pipeline_rows_per_s": variant_rates,
            "pipeline_steady_rows_per_s": variant_steady,
            "pipeline_startup_s": variant_startup,
            "pipeline_median": statistics.median(variant_rates),
            "pipeline_over_plain": statistics.median(variant_rates) / result["plain_median"],
        }
    result["target"] = ">= 0.80 of the plain loop's rows/s, end to end"
    result["met"] = result["pipeline_over_plain"] >= 0.8
    name = "pipeline-overhead-quick.json" if args.quick else "pipeline-overhead.json"
    name = name.replace(".json", "-variant.json") if variant else name
    saved = save_figures(Path(args.out) / name, result)
    print(f"pipeline / plain = {result['pipeline_over_plain']:.2f} (target >= 0.80); saved {saved}")
    return result


if __name__ == "__main__":
    main()
