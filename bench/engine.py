"""Engine benchmark: the stock MGIE path and our engine, side by side in one run.

    python -m bench.engine                      # on a GPU: mgie-7b sizes, random weights, fp16
    python -m bench.engine --quick              # tiny preset on the CPU (smoke test, runs in make test)

Paths measured on the same synthetic JPEGs, instructions and seeds:
  stock-bs1   reference style: HF `generate(output_hidden_states=True)` one image at a time, then the
              diffusers InstructPix2Pix pipeline at batch 1
  stock-bsN   the same two stock calls, batched
  engine      mgie's own path (the one the pipeline stages run): batched left-padded generation that
              keeps only the [IMG] states, batched 3-way-CFG sampling, fp16, channels-last, compiled UNet
Every path starts from JPEG bytes and ends with JPEG bytes. Each stock batch shape runs once untimed
first, the engine after its compile + warm-up pass; the stock paths all run before `MGIE.optimize`
(channels-last, compiled UNet) changes the UNet and VAE they share with the engine (the same-conditioning
quality check runs the stock pipeline after it). Random weights: compute does not depend on the values,
and a fixed answer length (min = max new tokens) keeps the MLLM work equal across paths. Results (images/s,
seconds per stage, peak memory, ratios, PSNR engine vs stock) print as a table and are saved as JSON
under bench/results/.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.args import bench_parser
from bench.images import synthetic_jpegs
from mgie import MGIE, preprocess_image
from mgie.devices import resolve_dtype
from mgie.generation import img_window_start

INSTRUCTIONS = [
    "make it more healthy",
    "add snow on the ground",
    "turn the sky into a sunset",
    "make it look like winter",
    "remove the people in the background",
    "brighten the photo",
    "make the colours warmer",
    "add fireworks",
]


@dataclass
class Settings:
    preset: str
    device: str
    dtype: str
    new_tokens: int  # P1 answer length (about a two-sentence instruction + 8 [IMG])
    ref_new_tokens: int  # P2: the reference maximum
    steps: tuple[int, int]  # (P1 steps, P2 steps)
    stock_bs1_images: int
    stock_batch: int
    stock_batch_images: int
    engine_images: int
    engine_ref_images: int
    overlap_images: int
    overlap_ref_images: int
    overlap_express_batch: int
    mllm_batch: int
    diffusion_batch: int
    compile_unet: bool
    input_size: tuple[int, int]
    seed: int = 13331


@dataclass
class PathResult:
    name: str
    images: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StageClock:
    def __init__(self, device: str):
        self.device, self.stages = device, {}

    @contextmanager
    def __call__(self, name: str):
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start


def decode(jpegs: list[bytes], resolution: int, pool: ThreadPoolExecutor) -> list[Image.Image]:
    return list(pool.map(lambda b: preprocess_image(Image.open(io.BytesIO(b)).convert("RGB"), resolution), jpegs))


def encode(images: list[Image.Image], pool: ThreadPoolExecutor) -> list[bytes]:
    def one(img):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        return buf.getvalue()

    return list(pool.map(one, images))


def chunks(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------------------- the stock path


def stock_conditioning(model: MGIE, images, instructions, new_tokens: int) -> torch.Tensor:
    """HF generate with every layer's hidden states, then the reference's window choice. -> (B, 77, C)"""
    cfg = model.config
    embeds, mask = model.embed_prompts(images, model.prompt_rows(instructions, cfg.prompt.edit_template))
    out = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        no_repeat_ngram_size=cfg.generation.no_repeat_ngram_size,
        output_hidden_states=True,
        return_dict_in_generate=True,
        pad_token_id=cfg.tokens.pad_id,
    )
    hidden = torch.cat([step[-1] for step in out.hidden_states], dim=1)  # (B, T + new - 1, H)
    states = []
    for row in range(hidden.shape[0]):
        gen = out.sequences[row].tolist()[-new_tokens:]
        # state T - 1 + k predicts generated token k; decoding ran to the full length (not `continued`)
        k = img_window_start(gen, cfg.tokens.img_first_id, cfg.tokens.num_img_tokens, continued=False)
        p = embeds.shape[1] - 1 + k
        states.append(hidden[row, p : p + cfg.tokens.num_img_tokens])
    return model.edit_head(torch.stack(states))


def stock_path(model, pipe, jpegs, seeds, steps, batch, new_tokens, pool, name) -> tuple[PathResult, list[Image.Image]]:
    clock = StageClock(str(model.device))
    outputs: list[Image.Image] = []
    sync(str(model.device))
    start = time.perf_counter()
    for lo, hi in chunks(len(jpegs), batch):
        with clock("decode"):
            images = decode(jpegs[lo:hi], model.config.sampler.resolution, pool)
        instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(lo, hi)]
        with clock("mllm"), torch.no_grad():
            cond = stock_conditioning(model, images, instructions, new_tokens)
        with clock("diffusion"):
            null = model.null_conditioning().expand(len(images), -1, -1)
            edited = pipe(
                image=images,
                prompt_embeds=cond,
                negative_prompt_embeds=null,
                num_inference_steps=steps,
                guidance_scale=model.config.sampler.guidance_scale,
                image_guidance_scale=model.config.sampler.image_guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[lo:hi]],
            ).images
        with clock("encode"):
            encode(edited, pool)
        outputs += edited
    sync(str(model.device))
    return PathResult(name, len(jpegs), time.perf_counter() - start, clock.stages), outputs


# ---------------------------------------------------------------------------- our engine


def _timed(model, jpegs, name, middle, pool) -> tuple[PathResult, list[Image.Image]]:
    """JPEG bytes in -> `middle(images, instructions, clock)` -> JPEG bytes out, timed per stage."""
    clock = StageClock(str(model.device))
    sync(str(model.device))
    start = time.perf_counter()
    with clock("decode"):
        images = decode(jpegs, model.config.sampler.resolution, pool)
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(len(jpegs))]
    outputs = middle(images, instructions, clock)
    with clock("encode"):
        encode(outputs, pool)
    sync(str(model.device))
    return PathResult(name, len(jpegs), time.perf_counter() - start, clock.stages), outputs


def engine_path(
    model, jpegs, seeds, steps, mllm_batch, diffusion_batch, pool, name
) -> tuple[PathResult, list[Image.Image]]:
    def middle(images, instructions, clock):
        conds = []
        with clock("mllm"):
            for lo, hi in chunks(len(images), mllm_batch):
                conds.append(model.express(images[lo:hi], instructions[lo:hi]).conditioning)
        cond = torch.cat(conds)
        outputs: list[Image.Image] = []
        with clock("diffusion"):
            for lo, hi in chunks(len(images), diffusion_batch):
                outputs += model.sample(images[lo:hi], cond[lo:hi], seeds[lo:hi], num_inference_steps=steps)
        return outputs

    return _timed(model, jpegs, name, middle, pool)


def overlap_path(model, jpegs, seeds, steps, express_batch, diffusion_batch, pool, name) -> PathResult:
    """The engine with the MLLM of the next chunk overlapping the diffusion of this one (mgie.engine)."""
    from mgie.engine import OverlappedEditor

    def middle(images, instructions, clock):
        with clock("mllm+diffusion"):
            editor = OverlappedEditor(model, express_batch, diffusion_batch)
            return editor.edit(images, instructions, seeds[: len(images)], steps).images

    return _timed(model, jpegs, name, middle, pool)[0]


def psnr(a: list[Image.Image], b: list[Image.Image]) -> float | None:
    """PSNR in dB over 8-bit pixels; None when the images are identical (infinite PSNR)."""
    x = np.stack([np.asarray(i, np.float64) for i in a])
    y = np.stack([np.asarray(i, np.float64) for i in b])
    mse = float(((x - y) ** 2).mean())
    return None if mse == 0 else 10 * math.log10(255.0**2 / mse)


@contextmanager
def peak_memory(device: str, result: dict, key: str):
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield
    if device.startswith("cuda"):
        result[key] = torch.cuda.max_memory_allocated() / 1e9


# ---------------------------------------------------------------------------- main


def settings_for(args) -> Settings:
    if args.quick:
        return Settings(
            preset="tiny",
            device=args.device or "cpu",
            dtype="float32",
            new_tokens=6,
            ref_new_tokens=8,
            steps=(2, 3),
            stock_bs1_images=2,
            stock_batch=2,
            stock_batch_images=4,
            engine_images=4,
            engine_ref_images=2,
            overlap_images=6,
            overlap_ref_images=4,
            overlap_express_batch=2,
            mllm_batch=4,
            diffusion_batch=2,
            compile_unet=False,
            input_size=(48, 40),
        )
    return Settings(
        preset=args.preset,
        device=args.device or "cuda",
        dtype=args.dtype,
        new_tokens=args.new_tokens,
        ref_new_tokens=96,
        steps=(20, 100),
        stock_bs1_images=args.stock_bs1_images,
        stock_batch=8,
        stock_batch_images=16,
        engine_images=args.engine_images,
        engine_ref_images=args.engine_ref_images,
        overlap_images=args.overlap_images,
        overlap_ref_images=args.overlap_ref_images,
        overlap_express_batch=args.overlap_express_batch,
        mllm_batch=args.mllm_batch,
        diffusion_batch=args.diffusion_batch,
        compile_unet=not args.no_compile,
        input_size=(640, 512),
    )


def environment(device: str) -> dict:
    import diffusers
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "host": platform.node(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["cpu_count"] = os.cpu_count()
    return env


def run(args) -> dict:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from mgie.sampler import build_scheduler

    s = settings_for(args)
    dtype = resolve_dtype(s.dtype, s.device)
    report: dict = {"settings": asdict(s), "environment": environment(s.device), "paths": {}, "memory_gb": {}}
    out_path = Path(args.out) / f"engine-{'cpu-tiny' if args.quick else 'gpu'}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out_path.write_text(json.dumps(report, indent=2))

    def record(res: PathResult, steps: int):
        report["paths"][res.name] = {**asdict(res), "images_per_s": res.images_per_s, "steps": steps}
        print(
            f"{res.name:<22} {res.images:>4} img  {res.seconds:8.2f} s  {res.images_per_s:7.3f} img/s  "
            + "  ".join(f"{k} {v:.2f}s" for k, v in res.stages.items()),
            flush=True,
        )
        save()

    run_start = time.perf_counter()
    model = MGIE.from_preset(s.preset, seed=0, device=s.device, dtype=dtype)
    model.config.generation.min_new_tokens = s.new_tokens
    model.config.generation.max_new_tokens = s.new_tokens
    report["build_seconds"] = time.perf_counter() - run_start
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae,
        text_encoder=None,
        tokenizer=None,
        unet=model.unet,
        scheduler=build_scheduler(model.config.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pool = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 2))
    n_max = max(s.engine_images, s.stock_batch_images, s.stock_bs1_images, s.overlap_images, s.overlap_ref_images)
    jpegs = synthetic_jpegs(n_max, s.input_size, seed=1)
    seeds = [s.seed + i for i in range(n_max)]
    p1, p2 = s.steps

    # P4: peak memory of one image through the engine (before any compile)
    with torch.no_grad(), peak_memory(s.device, report["memory_gb"], "engine_bs1"):
        engine_path(model, jpegs[:1], seeds[:1], p1, 1, 1, pool, "warmup")
    with torch.no_grad(), peak_memory(s.device, report["memory_gb"], "stock_bs1"):
        stock_path(model, pipe, jpegs[:1], seeds[:1], p1, 1, s.new_tokens, pool, "warmup")
    stock_path(model, pipe, jpegs[: s.stock_batch], seeds, p1, s.stock_batch, s.new_tokens, pool, "warmup")
    save()

    res, stock_imgs = stock_path(
        model, pipe, jpegs[: s.stock_bs1_images], seeds, p1, 1, s.new_tokens, pool, f"stock-bs1@{p1}"
    )
    record(res, p1)
    res, _ = stock_path(
        model,
        pipe,
        jpegs[: s.stock_batch_images],
        seeds,
        p1,
        s.stock_batch,
        s.new_tokens,
        pool,
        f"stock-bs{s.stock_batch}@{p1}",
    )
    record(res, p1)
    # P2's stock path (100 steps, 96 tokens) also runs here, on the UNet and VAE as built
    res, _ = stock_path(model, pipe, jpegs[:1], seeds, p2, 1, s.ref_new_tokens, pool, f"stock-bs1@{p2}")
    record(res, p2)

    plain_unet = model.unet
    model.optimize(channels_last=True, compile_unet=s.compile_unet)
    t0 = time.perf_counter()
    warm = min(s.engine_images, s.diffusion_batch)
    try:
        engine_path(model, jpegs[:warm], seeds[:warm], p1, s.mllm_batch, s.diffusion_batch, pool, "warmup")
    except Exception as exc:  # a compiler failure must not cost the whole run: measure eager instead
        report["compile_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print("torch.compile failed, continuing eager:", report["compile_error"], flush=True)
        model.unet = model._sampler.unet = plain_unet
        engine_path(model, jpegs[:warm], seeds[:warm], p1, s.mllm_batch, s.diffusion_batch, pool, "warmup")
    report["engine_warmup_seconds"] = time.perf_counter() - t0  # torch.compile + one warm-up pass
    save()
    res, engine_imgs = engine_path(
        model, jpegs[: s.engine_images], seeds, p1, s.mllm_batch, s.diffusion_batch, pool, f"engine@{p1}"
    )
    record(res, p1)
    report["psnr_db"] = {"engine_vs_stock_bs1_end_to_end": psnr(engine_imgs[: s.stock_bs1_images], stock_imgs)}

    # quality guard on identical conditioning: only the diffusion engine differs (one full diffusion
    # batch, so the compiled UNet sees the shape it was compiled for)
    images = decode(jpegs[: s.diffusion_batch], model.config.sampler.resolution, pool)
    with torch.no_grad():
        cond = model.express(images, [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(len(images))]).conditioning
        ours = model.sample(images, cond, seeds[: len(images)], num_inference_steps=p1)
        null = model.null_conditioning().expand(len(images), -1, -1)
        theirs = pipe(
            image=images,
            prompt_embeds=cond,
            negative_prompt_embeds=null,
            num_inference_steps=p1,
            guidance_scale=model.config.sampler.guidance_scale,
            image_guidance_scale=model.config.sampler.image_guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(x) for x in seeds[: len(images)]],
        ).images
    report["psnr_db"]["engine_vs_stock_diffusion_same_conditioning"] = psnr(ours, theirs)
    save()

    def overlapped(count: int, steps: int) -> None:
        try:
            record(
                overlap_path(
                    model,
                    jpegs[:count],
                    seeds,
                    steps,
                    s.overlap_express_batch,
                    s.diffusion_batch,
                    pool,
                    f"engine-overlap@{steps}",
                ),
                steps,
            )
        except Exception as exc:  # keep the figures already measured
            report[f"overlap_error@{steps}"] = f"{type(exc).__name__}: {exc}"[:2000]
            print("overlap failed:", report[f"overlap_error@{steps}"], flush=True)
            save()

    overlapped(s.overlap_images, p1)

    # P2: reference settings (100 steps, 96 new tokens)
    model.config.generation.min_new_tokens = model.config.generation.max_new_tokens = s.ref_new_tokens
    res, _ = engine_path(
        model, jpegs[: s.engine_ref_images], seeds, p2, s.mllm_batch, s.diffusion_batch, pool, f"engine@{p2}"
    )
    record(res, p2)
    overlapped(s.overlap_ref_images, p2)

    paths = report["paths"]
    best = {
        steps: max((v["images_per_s"] for k, v in paths.items() if k.startswith("engine") and v["steps"] == steps))
        for steps in (p1, p2)
    }
    report["best_engine_images_per_s"] = {str(k): v for k, v in best.items()}
    report["ratios"] = {
        "best_engine_vs_stock_bs1_at_p1": best[p1] / paths[f"stock-bs1@{p1}"]["images_per_s"],
        "best_engine_vs_stock_bs1_at_p2": best[p2] / paths[f"stock-bs1@{p2}"]["images_per_s"],
        "engine_vs_stock_bs1_at_p1": paths[f"engine@{p1}"]["images_per_s"] / paths[f"stock-bs1@{p1}"]["images_per_s"],
        "engine_vs_stock_batched_at_p1": paths[f"engine@{p1}"]["images_per_s"]
        / paths[f"stock-bs{s.stock_batch}@{p1}"]["images_per_s"],
        "engine_vs_stock_bs1_at_p2": paths[f"engine@{p2}"]["images_per_s"] / paths[f"stock-bs1@{p2}"]["images_per_s"],
    }
    report["total_seconds"] = time.perf_counter() - run_start  # model build to the end
    save()
    print(
        json.dumps(
            {
                "ratios": report["ratios"],
                "best_engine_images_per_s": report["best_engine_images_per_s"],
                "psnr_db": report["psnr_db"],
                "memory_gb": report["memory_gb"],
            },
            indent=1,
        )
    )
    print(f"saved {out_path}")
    return report


def main(argv=None) -> dict:
    ap = bench_parser(__doc__, quick="tiny preset on the CPU (smoke)")
    ap.add_argument("--preset", default="mgie-7b")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--new-tokens", type=int, default=48, help="P1 answer length (default 48)")
    ap.add_argument("--stock-bs1-images", type=int, default=3)
    ap.add_argument("--engine-images", type=int, default=96)
    ap.add_argument("--engine-ref-images", type=int, default=32)
    ap.add_argument("--overlap-images", type=int, default=160)
    ap.add_argument("--overlap-ref-images", type=int, default=48)
    ap.add_argument("--overlap-express-batch", type=int, default=32)
    ap.add_argument("--mllm-batch", type=int, default=64)
    ap.add_argument("--diffusion-batch", type=int, default=16)
    ap.add_argument("--no-compile", action="store_true")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
