"""What auto-QA adds to the edit stage: the edit actor's work on one batch, QA off and on, side by side.

    python -m bench.qa_cost                       # CPU: tiny MGIE at 512 px, tiny random CLIP (make bench-qa-cost)
    python -m bench.qa_cost --device cuda --model mgie-7b --clip vit-l-14 --steps 20 --batch-size 8 \\
        --compile off                             # one GPU: SD-sized UNet/VAE, a CLIP ViT-L/14-sized tower

Per repeat the same batch (photo-like working images, fixed conditioning and seeds) goes through the edit
actor's own call, `pipeline.model_stages.edit_rows`, twice: without QA and with a QualityChecker (change,
SSIM, and CLIP when --clip is not `none`). The order alternates (off/on, then on/off) so that drift on a
shared machine hits both sides. Inside the QA-on call the QA itself is timed as well: that figure, over
the QA-off edit time, is the share QA adds; the on-minus-off difference is recorded beside it (noisier: it
is the difference of two long timings). A QA-only pass without CLIP splits change + SSIM from CLIP.

All weights are random (no model is downloaded): MGIE from its preset, CLIP built in code with the sizes
named by --clip and saved with save_pretrained, loaded as `--qa-clip` loads it. JSON:
bench/results/qa-cost-<cpu|gpu name>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.editors import ModelSpec
from pipeline.evaluation.metrics import build_tiny_clip
from pipeline.identity import SamplerSettings
from pipeline.model_stages import edit_rows
from pipeline.quality import QASettings, QualityChecker
from tests.photos import photo

INSTRUCTIONS = [
    "make it more healthy",
    "add snow on the ground",
    "turn the sky into a sunset",
    "brighten the photo",
    "make the colours warmer",
    "add fireworks",
    "make it look like winter",
    "give it a vintage look",
]
# CLIP tower sizes (random weights): tiny (the tests' model) and the two real CLIPs QA would use
CLIP_SIZES = {
    "vit-b-32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        projection_dim=512,
    ),
    "vit-l-14": dict(
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        projection_dim=768,
    ),
}


def save_clip(kind: str, folder: Path) -> Path:
    """A random CLIP of the named size in transformers' layout (the tiny tokenizer: its vocabulary size
    does not change the cost of a tower)."""
    from transformers import CLIPConfig, CLIPModel

    model, tokenizer, _ = build_tiny_clip(seed=0)
    if kind != "tiny":
        sizes, text = CLIP_SIZES[kind], model.config.text_config
        config = CLIPConfig(
            text_config=dict(
                vocab_size=text.vocab_size,
                max_position_embeddings=77,
                bos_token_id=text.bos_token_id,
                eos_token_id=text.eos_token_id,
                pad_token_id=text.pad_token_id,
                **sizes["text"],
            ),
            vision_config=sizes["vision"],
            projection_dim=sizes["projection_dim"],
        )
        torch.manual_seed(0)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_batch(editor, size: int, n: int) -> list[dict]:
    """Rows as the edit actor gets them: working pixels, conditioning (the null one, jittered), seed."""
    null = editor.null_conditioning().float().cpu().numpy()[0]  # (S, C)
    rng = np.random.default_rng(0)
    return [
        {
            "key": f"r{i}",
            "status": "pending",
            "pixels": photo(size, size, seed=i),
            "seed": 1000 + i,
            "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
            "expressive_instruction": f"{INSTRUCTIONS[i % len(INSTRUCTIONS)]}: a bright, detailed photograph",
            "conditioning": (null + 0.1 * rng.standard_normal(null.shape)).astype(np.float32),
        }
        for i in range(n)
    ]


class TimedChecker:
    """The QualityChecker, with the time of each `score` call kept."""

    def __init__(self, inner: QualityChecker):
        self.inner, self.seconds = inner, []

    def score(self, batch):
        sync()
        t0 = time.perf_counter()
        self.inner.score(batch)
        sync()
        self.seconds.append(time.perf_counter() - t0)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_edit(editor, batch: list[dict], sample: SamplerSettings, qa) -> float:
    rows = [dict(r) for r in batch]  # edit_rows drops each row's conditioning
    sync()
    t0 = time.perf_counter()
    edit_rows(editor, rows, sample, qa)
    sync()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clip", default="tiny", choices=["none", "tiny", *CLIP_SIZES])
    parser.add_argument("--size", type=int, default=512, help="working image side, px (default: 512)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="diffusion steps (default: 1, a quarter of the tiny preset's 4: a shorter edit makes "
        "QA's share look larger, never smaller)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default: 2)")
    parser.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    parser.add_argument("--warmup", action="store_true", help="one untimed edit each way first (GPU: kernels)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    editor = ModelSpec(args.model, device=args.device, compile=args.compile).load({"edit"})
    sample = SamplerSettings(args.steps, 7.5, 1.5, args.size)
    batch = make_batch(editor, args.size, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        clip = None if args.clip == "none" else str(save_clip(args.clip, Path(tmp)))
        checker = TimedChecker(QualityChecker(QASettings(clip), editor.device))
        plain = TimedChecker(QualityChecker(QASettings(), editor.device))  # change + SSIM only
        load = os.getloadavg()
        if args.warmup:
            timed_edit(editor, batch, sample, None), timed_edit(editor, batch, sample, checker)
            checker.seconds.clear()
        off, on = [], []
        for r in range(args.repeats):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                spent = timed_edit(editor, batch, sample, checker if mode == "on" else None)
                (on if mode == "on" else off).append(spent)
                print(f"repeat {r}: QA {mode:<3} {spent:8.3f} s", flush=True)
        edited = [dict(r, edited=photo(args.size, args.size, seed=100 + i)) for i, r in enumerate(batch)]
        for _ in range(max(3, args.repeats)):
            plain.score(edited)
        load = [round(x, 2) for x in load + os.getloadavg()]

    n = args.batch_size
    per_row_ms = lambda xs: round(1000 * statistics.median(xs) / n, 3)  # noqa: E731
    edit_ms, on_ms, qa_ms = per_row_ms(off), per_row_ms(on), per_row_ms(checker.seconds)
    result = {
        "measured": dt.date.today().isoformat(),
        "what": "edit stage (pipeline.model_stages.edit_rows) per row, QA off vs on, same batch, same process",
        "setup": {
            "device": args.device,
            "device_name": torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else platform.processor() or platform.machine(),
            "model": args.model,
            "clip": args.clip,
            "clip_dtype": str(checker.inner.clip.dtype) if checker.inner.clip else None,
            "work_size": [args.size, args.size],
            "batch_size": n,
            "steps": args.steps,
            "repeats": args.repeats,
            "torch_threads": args.threads,
            "compile": args.compile,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_start_end": load,
        },
        "seconds": {
            "edit_qa_off": off,
            "edit_qa_on": on,
            "qa_inside_on": checker.seconds,
            "qa_change_ssim_only": plain.seconds,
        },
        "ms_per_row": {
            "edit_qa_off": edit_ms,
            "edit_qa_on": on_ms,
            "qa": qa_ms,
            "qa_change_ssim": per_row_ms(plain.seconds),
            "qa_clip": round(qa_ms - per_row_ms(plain.seconds), 3) if clip else None,
        },
        "qa_share_of_edit": round(qa_ms / edit_ms, 5),
        "on_minus_off_share": round((on_ms - edit_ms) / edit_ms, 5),
        "target_share": 0.05,
    }
    result["meets_target"] = result["qa_share_of_edit"] <= result["target_share"]
    name = "cpu" if args.device == "cpu" else result["setup"]["device_name"].split()[-1].lower()
    out = Path(args.out or Path(__file__).parent / "results" / f"qa-cost-{name}-{result['measured']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ms_per_row", "qa_share_of_edit", "on_minus_off_share")}, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
