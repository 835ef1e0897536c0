"""Scaling benchmark (P5): rows/s of the edit job with 1 vs 2 edit actors, tiny model, local Ray + local S3.

    python -m bench.scaling                       # 64 rows x 20 steps, alternating 1/2 actors, 2 rounds
    python -m bench.scaling --rows 16 --rounds 1  # quick

Everything else is the `cpu` resources preset of the pipeline (one express actor, fractional CPUs, one torch
thread per actor); only the size of the edit actor pool changes. Each configuration runs the real job
(`pipeline.run.run_edit`, shards and outputs on a local S3 endpoint) into a fresh output prefix; runs
alternate 1, 2, 1, 2, ... on one warm Ray instance so that drift on a shared machine hits both alike.

Two rates per run:
  end_to_end_rows_per_s   rows / job wall time (plan, actor start-up and model loading included)
  steady_rows_per_s       rows committed after the first commit / time from the first to the last commit:
                          the rate once the actors are up, which is what more actors should raise
  edit_capacity_rows_per_s  actors x 1000 / edit ms per row: the edit pool's rate if nothing else limited it;
                          a second actor that doubles the per-row time found no free core
The result (per run, medians, speedup) prints and is saved as JSON under bench/results/.

On a machine with C cores the speedup is bounded by C / (cores the rest of the pipeline needs): on the
2-core CI machine the express actor, reads and writes share the cores with the edit actors.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    rows: int = 64
    rows_per_shard: int = 4  # one unit per shard: a shard is one Ray Data block, small blocks stream finely
    steps: int = 20  # diffusion steps: makes the edit stage the bottleneck, as it is on GPUs
    actors: tuple[int, ...] = (1, 2)
    rounds: int = 2
    ray_cpus: int | None = None  # default: all cores of this machine


def _register_presets(actors: tuple[int, ...]) -> dict[int, str]:
    """`cpu` preset copies that differ only in the edit pool size; returns {actors: preset name}."""
    from pipeline.config import RESOURCE_PRESETS

    base = RESOURCE_PRESETS["cpu"]
    names = {}
    for n in actors:
        name = f"bench-cpu-edit{n}"
        RESOURCE_PRESETS[name] = dataclasses.replace(base, name=name, edit=dataclasses.replace(base.edit, actors=n))
        names[n] = name
    return names


def steady_rate(store) -> tuple[float | None, int]:
    """(rows/s between the first and the last commit, units) from the commit records of an output store:
    the rows of every unit after the first over the time from the first commit to the last. Shared by
    the benchmarks so that their "steady" rates mean the same thing."""
    from pipeline.ledger import load_state

    recs = sorted(load_state(store).commits.values(), key=lambda r: r["committed_at"])
    if len(recs) < 2:
        return None, len(recs)
    t = [dt.datetime.fromisoformat(r["committed_at"]) for r in recs]
    span = (t[-1] - t[0]).total_seconds()
    rows_after_first = sum(r["n_rows"] for r in recs[1:])
    return (rows_after_first / span if span > 0 else None), len(recs)


def edit_capacity(actors: int, mean_ms: dict) -> float | None:
    """actors x rows/s of one actor, from the measured edit time per row: what the edit pool could do if
    nothing else limited it. When a second actor doubles the per-row time, the actors share the same
    cores and the pool gains nothing."""
    ms = mean_ms.get("edit")
    return round(actors * 1000.0 / ms, 4) if ms else None


def run(cfg: ScalingConfig, out_dir: Path, tag: str = "") -> dict:
    load_at_start = list(os.getloadavg())  # before this benchmark's own imports and processes
    import ray
    import torch

    from mgie import MGIE
    from pipeline.config import RESOURCE_PRESETS, EditConfig
    from pipeline.dev.demo_data import write_demo_shards
    from pipeline.dev.local_s3 import local_s3
    from pipeline.editors import ModelSpec
    from pipeline.run import run_edit
    from pipeline.storage import Store

    presets = _register_presets(cfg.actors)
    n_shards = max(1, cfg.rows // cfg.rows_per_shard)
    with local_s3(("bench",)) as s3:
        os.environ.update(s3.env())  # the job and the Ray workers started below read the endpoint from here
        write_demo_shards(
            "s3://bench/in",
            n_shards=n_shards,
            rows_per_shard=cfg.rows_per_shard,
            storage_options=s3.storage_options(),
            size=64,
        )
        MGIE.from_preset("tiny", seed=0).save_pretrained("s3://bench/models/tiny", storage_options=s3.storage_options())
        model = ModelSpec(source="s3://bench/models/tiny", storage_options=s3.storage_options())
        inputs = f"s3://bench/in/demo-{{000..{n_shards - 1:03d}}}.tar"

        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        ray.init(
            num_cpus=cfg.ray_cpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            log_to_driver=False,
            configure_logging=False,
        )
        runs = []
        try:
            # warm-up: Ray worker processes and imports, not measured
            run_edit(
                EditConfig.of(
                    input="s3://bench/in/demo-000.tar",
                    output="s3://bench/warmup",
                    model=model,
                    steps=cfg.steps,
                    unit_rows=cfg.rows_per_shard,
                    resources=presets[cfg.actors[0]],
                    progress=False,
                )
            )
            for r in range(cfg.rounds):
                for n in cfg.actors:
                    output = f"s3://bench/out-r{r}-edit{n}"
                    t0 = time.perf_counter()
                    summary = run_edit(
                        EditConfig.of(
                            input=inputs,
                            output=output,
                            model=model,
                            steps=cfg.steps,
                            unit_rows=cfg.rows_per_shard,
                            resources=presets[n],
                            progress=False,
                        )
                    )
                    wall = time.perf_counter() - t0
                    steady, units = steady_rate(Store.open(output, None))
                    processed = summary["ok"] + summary["error"]
                    assert processed == n_shards * cfg.rows_per_shard, summary  # a fresh output: every row
                    runs.append(
                        {
                            "round": r,
                            "edit_actors": n,
                            "rows": processed,
                            "units": units,
                            "wall_s": round(wall, 3),
                            "end_to_end_rows_per_s": round(processed / wall, 4),
                            "steady_rows_per_s": round(steady, 4) if steady else None,
                            "mean_ms_per_row": summary["mean_ms"],
                            "edit_capacity_rows_per_s": edit_capacity(n, summary["mean_ms"]),
                        }
                    )
                    print(
                        f"round {r} edit actors {n}: {processed} rows in {wall:.1f} s, "
                        f"end-to-end {processed / wall:.2f} rows/s, steady {steady or float('nan'):.2f} rows/s",
                        flush=True,
                    )
        finally:
            ray.shutdown()

    def median(n: int, field: str) -> float | None:
        values = [x[field] for x in runs if x["edit_actors"] == n and x[field] is not None]
        return round(statistics.median(values), 4) if values else None

    summary = {
        n: {f: median(n, f) for f in ("steady_rows_per_s", "end_to_end_rows_per_s", "edit_capacity_rows_per_s")}
        for n in cfg.actors
    }
    lo, hi = min(cfg.actors), max(cfg.actors)
    speedup = {
        field: round(summary[hi][field] / summary[lo][field], 3) if summary[lo][field] and summary[hi][field] else None
        for field in ("steady_rows_per_s", "end_to_end_rows_per_s", "edit_capacity_rows_per_s")
    }
    base = RESOURCE_PRESETS["cpu"]
    report = {
        "benchmark": "P5 scaling: edit job rows/s with 1 vs 2 edit actors (tiny model)",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "config": dataclasses.asdict(cfg) | {"resources_base": dataclasses.asdict(base), "model": "tiny (seed 0)"},
        "runs": runs,
        "median": {str(k): v for k, v in summary.items()},
        f"speedup_{hi}_vs_{lo}": speedup,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"scaling-cpu{os.cpu_count()}{'-' + tag if tag else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median": report["median"], f"speedup_{hi}_vs_{lo}": speedup, "saved": str(path)}, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="See the module docstring for what is measured."
    )
    ap.add_argument("--rows", type=int, default=ScalingConfig.rows, help="input rows (default: %(default)s)")
    ap.add_argument(
        "--rows-per-shard",
        type=int,
        default=ScalingConfig.rows_per_shard,
        help="rows per shard = per unit (default: %(default)s)",
    )
    ap.add_argument("--steps", type=int, default=ScalingConfig.steps, help="diffusion steps (default: %(default)s)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=ScalingConfig.rounds,
        help="alternating rounds over the actor counts (default: %(default)s)",
    )
    ap.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    ap.add_argument("--out", default="bench/results", help="folder for the JSON (default: %(default)s)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (default: none)")
    args = ap.parse_args(argv)
    cfg = ScalingConfig(
        rows=args.rows, rows_per_shard=args.rows_per_shard, steps=args.steps, rounds=args.rounds, ray_cpus=args.ray_cpus
    )
    run(cfg, Path(args.out), args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
