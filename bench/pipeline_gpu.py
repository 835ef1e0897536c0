"""The product on one GPU: the real `mgie-batch edit` command, timed from the outside, beside the in-process
engine and the stock batched diffusers path in the same run.

    python -m bench.pipeline_gpu                 # GPU: mgie-7b sizes, random weights, fp16 (make bench-gpu-pipeline)
    python -m bench.pipeline_gpu --quick         # tiny preset on the CPU: a smoke run of the whole script

Each scenario runs `python -m jobs.cli edit ...` as a user would (its own process, its own Ray) on generated
WebDataset shards of 640 x 512 JPEGs and reads the figures back from what the job wrote:
  end_to_end_rows_per_s   rows / wall time of the command (Ray start, model builds and compile included)
  first_commit_s          command start -> first commit record (the time a user waits for any output)
  steady_rows_per_s       rows of the units after the first / time between the first and the last commit
  stage_ms_per_row        ledger means per row (express, edit, encode), each actor's own busy time
  gpu                     utilisation and memory sampled every 0.5 s with nvidia-smi (peak memory = max)
Scenarios run in priority order under one deadline; one that would overrun is stopped and its committed
units still count (steady rate from the commits it made). The in-process engine and stock batch-8 paths
(bench.engine) give the ratios. JSON: bench/results/pipeline-gpu-<gpu>-<date>.json, rewritten after every
scenario so a stopped run keeps what it measured.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.args import bench_parser

INSTRUCTIONS = [
    "make it more healthy",
    "add snow on the ground",
    "turn the sky into a sunset",
    "brighten the photo",
    "make the colours warmer",
    "add fireworks",
]


# a steady rate needs several units after the first: a short run's last units leave the pipeline in one burst
MIN_STEADY_UNITS = 4


@dataclass(frozen=True)
class Scenario:
    name: str
    layout: str  # split | fused
    steps: int
    rows: int
    unit_rows: int


def write_shards(folder: Path, rows: int, per_shard: int, size: tuple[int, int], unique: int = 64) -> str:
    """`rows` samples of 640 x 512 JPEG + txt in shards of `per_shard`; `unique` distinct pictures cycle
    (decode cost is per row either way). -> brace pattern of the shards"""
    from bench.images import synthetic_jpegs

    folder.mkdir(parents=True, exist_ok=True)
    pictures = synthetic_jpegs(min(unique, rows), size, seed=1)
    shards = (rows + per_shard - 1) // per_shard
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(s * per_shard, min(rows, (s + 1) * per_shard)):
                for ext, data in (
                    ("jpg", pictures[i % len(pictures)]),
                    ("txt", INSTRUCTIONS[i % len(INSTRUCTIONS)].encode()),
                ):
                    info = tarfile.TarInfo(f"{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"shard-{{000..{shards - 1:03d}}}.tar")


class GpuSampler:
    """nvidia-smi every 0.5 s in the background: utilisation (%) and memory used (MiB) of GPU 0."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []  # (t, util %, memory MiB)
        self._proc = None
        self._thread = None

    def __enter__(self):
        try:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-i",
                    "0",
                    "-lms",
                    "500",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return self  # no NVIDIA driver (the --quick run on a CPU machine)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                util, mem = (float(x) for x in line.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.monotonic(), util, mem))

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def summary(self, since: float | None = None) -> dict:
        rows = [s for s in self.samples if since is None or s[0] >= since]
        if not rows:
            return {}
        util = [u for _, u, _ in rows]
        return {
            "util_mean_pct": sum(util) / len(util),
            "util_busy_fraction": sum(u > 0 for u in util) / len(util),
            "memory_peak_gb": max(m for _, _, m in rows) * 2**20 / 1e9,
            "samples": len(rows),
        }


def _commit_times(out: Path) -> list[tuple[float, int]]:
    """(commit wall time, rows of the unit) per commit record, in commit order."""
    records = (
        [json.loads(p.read_text()) for p in (out / "commits").glob("*.json")] if (out / "commits").exists() else []
    )
    times = [(dt.datetime.fromisoformat(r["committed_at"]).timestamp(), r["n_rows"]) for r in records]
    return sorted(times)


def _ledger_means(out: Path) -> dict:
    import pyarrow.parquet as pq

    files = sorted((out / "ledger").glob("*.parquet")) if (out / "ledger").exists() else []
    if not files:
        return {}
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    means = {}
    for stage in ("decode", "express", "edit", "encode"):
        values = [r[f"ms_{stage}"] for r in rows if r.get(f"ms_{stage}") is not None]
        if values:
            means[stage] = sum(values) / len(values)
    return means


def run_scenario(sc: Scenario, pattern: str, work: Path, args, timeout: float) -> dict:
    out = work / f"out-{sc.name}"
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--input",
        pattern,
        "--output",
        str(out),
        "--model",
        args.model,
        "--steps",
        str(sc.steps),
        "--unit-rows",
        str(sc.unit_rows),
        "--layout",
        sc.layout,
        "--resources",
        args.resources,
        "--compile-cache",
        str(args.compile_cache),
        "--no-progress",
        "--json",
    ]
    if args.quick:
        cmd += ["--device", "cpu"]
    log = work / f"{sc.name}.log"
    cache_warm = any(Path(args.compile_cache).rglob("*")) if Path(args.compile_cache).exists() else False
    with GpuSampler() as gpu, open(log, "w") as logf:
        wall0, t0 = time.time(), time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
            stopped = False
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
            stopped = True
        seconds = time.monotonic() - t0
    commits = _commit_times(out)
    result = {
        "scenario": asdict(sc),
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "stopped_at_deadline": stopped,
        "seconds": seconds,
        "compile_cache_warm_at_start": cache_warm,
        "rows_committed": sum(n for _, n in commits),
        "units_committed": len(commits),
    }
    if proc.returncode not in (0, None) and not stopped:
        result["stderr_tail"] = log.read_text()[-3000:]
    if commits:
        result["first_commit_s"] = commits[0][0] - wall0
        result["end_to_end_rows_per_s"] = result["rows_committed"] / seconds
        if len(commits) >= MIN_STEADY_UNITS:
            span = commits[-1][0] - commits[0][0]
            result["steady_rows_per_s"] = sum(n for _, n in commits[1:]) / span if span > 0 else None
    result["stage_ms_per_row"] = _ledger_means(out)
    result["gpu"] = gpu.summary()
    try:
        summary = json.loads(stdout) if stdout.strip() else {}
        result["job_summary"] = {k: summary.get(k) for k in ("ok", "error", "rows_per_second", "layout", "resources")}
    except json.JSONDecodeError:
        result["stdout_tail"] = stdout[-2000:]
    return result


def in_process_paths(args, steps: int, report: dict) -> None:
    """bench.engine's engine path and stock batch-8 path, this process, same sizes: the ratio baselines."""
    import torch

    from bench import engine as eng
    from mgie import MGIE
    from mgie.sampler import build_scheduler
    from pipeline.editors import use_compile_cache

    use_compile_cache(str(args.compile_cache))
    device, dtype = ("cpu", torch.float32) if args.quick else ("cuda", torch.float16)
    model = MGIE.from_preset(args.model, seed=0, device=device, dtype=dtype)
    tokens = 6 if args.quick else 48
    model.config.generation.min_new_tokens = model.config.generation.max_new_tokens = tokens
    from diffusers import StableDiffusionInstructPix2PixPipeline

    # the stock path keeps a plain copy of the UNet: the product's speed settings change the module in place
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae,
        text_encoder=None,
        tokenizer=None,
        unet=copy.deepcopy(model.unet),
        scheduler=build_scheduler(model.config.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 2))
    n_stock, n_engine = (4, 4) if args.quick else (16, 64)
    jpegs = eng.synthetic_jpegs(max(n_stock, n_engine), (640, 512), seed=1)
    seeds = [13331 + i for i in range(len(jpegs))]
    batch = 2 if args.quick else 8
    eng.stock_path(model, pipe, jpegs[:batch], seeds, steps, batch, tokens, pool, "warmup")
    res, _ = eng.stock_path(model, pipe, jpegs[:n_stock], seeds, steps, batch, tokens, pool, f"stock-bs{batch}")
    report["in_process"][f"stock-bs{batch}@{steps}"] = {**asdict(res), "images_per_s": res.images_per_s}
    on_gpu = not args.quick
    model.optimize(channels_last=on_gpu, compile_unet=on_gpu, fuse_qkv=on_gpu)  # what the product's actors use
    mllm, diffusion = (4, 2) if args.quick else (64, 16)
    eng.engine_path(model, jpegs[:diffusion], seeds, steps, mllm, diffusion, pool, "warmup")
    res, _ = eng.engine_path(model, jpegs[:n_engine], seeds, steps, mllm, diffusion, pool, "engine")
    report["in_process"][f"engine@{steps}"] = {**asdict(res), "images_per_s": res.images_per_s}
    # quality guard: the product's diffusion settings vs the stock pipeline on the same conditioning and seeds
    images = eng.decode(jpegs[:diffusion], model.config.sampler.resolution, pool)
    with torch.no_grad():
        cond = model.express(images, [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(len(images))]).conditioning
        ours = model.sample(images, cond, seeds[:diffusion], num_inference_steps=steps)
        theirs = pipe(
            image=images,
            prompt_embeds=cond,
            negative_prompt_embeds=model.null_conditioning().expand(len(images), -1, -1),
            num_inference_steps=steps,
            guidance_scale=model.config.sampler.guidance_scale,
            image_guidance_scale=model.config.sampler.image_guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(x) for x in seeds[:diffusion]],
        ).images
    report["quality_guard_psnr_db"] = eng.psnr(ours, theirs)
    del model, pipe
    if device == "cuda":
        torch.cuda.empty_cache()


def scenarios(args) -> list[Scenario]:
    """In priority order: the headline run first (the baselines follow it), then the layout comparison
    and the reference step count. `smoke`: a short first look (cold compile cache) before the full plan."""
    if args.quick:
        return [Scenario("fused-20", "fused", 2, 8, 4), Scenario("split-20", "split", 2, 8, 4)]
    if args.plan == "smoke":
        return [Scenario("fused-20-smoke", "fused", 20, 128, 64)]
    if args.plan == "followup":  # what the full plan left: cold then warm compile cache, and 100 steps
        return [Scenario("fused-20-cold", "fused", 20, 128, 32), Scenario("fused-100-warm", "fused", 100, 192, 32)]
    return [
        Scenario("fused-20", "fused", 20, args.rows, 64),
        Scenario("split-20", "split", 20, args.split_rows, 64),
        Scenario("fused-100", "fused", 100, args.rows_100, 32),
    ]


def main(argv=None) -> dict:
    ap = bench_parser(__doc__, quick="tiny preset on the CPU (smoke)")
    ap.add_argument("--model", default=None, help="default: mgie-7b (tiny with --quick)")
    ap.add_argument("--resources", default=None, help="default: 80gb-per-gpu (cpu with --quick)")
    ap.add_argument(
        "--plan",
        default="full",
        choices=["full", "smoke", "followup"],
        help="full: every scenario and the in-process baselines; smoke: one short fused run; "
        "followup: a cold-cache 20-step run, then a 100-step run on the cache it left",
    )
    ap.add_argument("--rows", type=int, default=1024, help="rows of the fused 20-step run (default 1024)")
    ap.add_argument("--split-rows", type=int, default=256, help="rows of the split-layout run (default 256)")
    ap.add_argument("--rows-100", type=int, default=128, help="rows of the 100-step run (default 128)")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds for the whole script (default 540)")
    ap.add_argument("--work", default="/tmp/mgie-bench-pipeline-gpu", help="shards and outputs")
    ap.add_argument("--compile-cache", default=None, help="default: WORK/compile-cache (starts cold)")
    args = ap.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else "mgie-7b")
    args.resources = args.resources or ("cpu" if args.quick else "80gb-per-gpu")
    start = time.monotonic()
    work = Path(args.work)
    args.compile_cache = Path(args.compile_cache or work / "compile-cache")
    size = (64, 48) if args.quick else (640, 512)
    gpu_name = _gpu_name()
    stamp = dt.date.today().isoformat()
    name = (
        "pipeline-cpu-quick"
        if args.quick
        else f"pipeline-gpu-{gpu_name}-{stamp}" + ("" if args.plan == "full" else f"-{args.plan}")
    )
    out_path = Path(args.out) / f"{name}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "gpu": gpu_name,
        "date": stamp,
        "model": args.model,
        "resources": args.resources,
        "input_size": list(size),
        "scenarios": {},
        "in_process": {},
        "environment": _environment(),
    }

    def save():
        report["script_seconds"] = time.monotonic() - start
        out_path.write_text(json.dumps(report, indent=2, default=str))

    plan = scenarios(args)
    patterns = {sc.name: write_shards(work / f"in-{sc.name}", sc.rows, 256, size) for sc in plan}
    report["shards_seconds"] = time.monotonic() - start
    for i, sc in enumerate(plan):
        left = args.deadline - (time.monotonic() - start)
        if left < 30:
            report["scenarios"][sc.name] = {"skipped": f"deadline: {left:.0f} s left"}
            continue
        print(
            f"scenario {sc.name}: {sc.rows} rows, {sc.steps} steps, layout {sc.layout} ({left:.0f} s left)", flush=True
        )
        res = run_scenario(sc, patterns[sc.name], work, args, timeout=left - 5)
        report["scenarios"][sc.name] = res
        print(json.dumps({k: v for k, v in res.items() if k != "stderr_tail"}, default=str), flush=True)
        if res.get("stderr_tail"):
            print(res["stderr_tail"], flush=True)
        save()
        if i == 0 and args.plan == "full":  # the baselines right after the headline run
            try:
                in_process_paths(args, plan[0].steps, report)
            except Exception as exc:  # keep the product figures
                report["in_process_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            print(json.dumps(report["in_process"], default=str)[:2000], flush=True)
            save()
    _ratios(report, plan[0])
    save()
    print(json.dumps({"ratios": report.get("ratios")}, indent=1))
    print(f"saved {out_path}")
    return report


def _ratios(report: dict, headline: Scenario) -> None:
    main_run = report["scenarios"].get(headline.name, {})
    steady = main_run.get("steady_rows_per_s")
    stock = next((v["images_per_s"] for k, v in report["in_process"].items() if k.startswith("stock")), None)
    engine = next((v["images_per_s"] for k, v in report["in_process"].items() if k.startswith("engine")), None)
    report["steady_rows_per_s"] = steady
    report["end_to_end_rows_per_s"] = main_run.get("end_to_end_rows_per_s")
    report["first_commit_s"] = main_run.get("first_commit_s")
    report["steps"] = headline.steps
    report["ratios"] = {
        "steady_vs_stock_batched": steady / stock if steady and stock else None,
        "steady_vs_engine": steady / engine if steady and engine else None,
        "end_to_end_vs_steady": (main_run.get("end_to_end_rows_per_s") or 0) / steady if steady else None,
    }


def _gpu_name() -> str:
    try:
        name = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return name.lower().replace("nvidia ", "").split()[0] if name else "cpu"


def _environment() -> dict:
    import platform

    env = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    for lib in ("torch", "diffusers", "transformers", "ray"):
        try:
            env[lib] = __import__(lib).__version__
        except Exception:  # a missing library is a fact of the environment, not a failure of the benchmark
            env[lib] = None
    return env


if __name__ == "__main__":
    main()
