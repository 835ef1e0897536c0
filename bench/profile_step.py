"""Where a training step of mgie-tiny's MGIE objective goes, and what the recipe's two speed levers buy.

    python -m bench.profile_step --steps 20 --batch-size 16 --threads 1

Times the parts of one step (batch decode + tokenising, the frozen CLIP and VAE passes, the MLLM forward, the
whole forward, backward + optimizer) on real procedural triplets, side by side in one process:
  - the reference's vicuna_v1_1 system text against mgie-tiny's one-line system text (sequence length);
  - the frozen parts run every step against FrozenFeatures (computed once per row, reused afterwards).
Random weights at mgie-tiny's sizes: the cost does not depend on the values. JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch

from bench.args import save_figures


def _rows(n: int) -> list[dict]:
    from pipeline.training.photo_sets import iter_photo_set
    from pipeline.training.procedural import ProceduralSettings, triplets

    out = []
    for key, fields in triplets(
        iter_photo_set("builtin:train:2"), ProceduralSettings(resolution=64, edits_per_image=0)
    ):
        meta = json.loads(fields["json"])
        out.append(
            {
                "key": key,
                "input": fields["input.png"],
                "goal": fields["goal.png"],
                "instruction": meta["instruction"],
                "expressive": meta["expressive_instruction"],
            }
        )
        if len(out) == n:
            break
    return out


def profile(system: str | None, cached: bool, steps: int, batch_size: int) -> dict:
    """system: the system text to use instead of mgie-tiny's own (None keeps it)."""
    from mgie.model import MGIE
    from mgie.training import MGIETrainModule, ObjectiveConfig, build_batch
    from pipeline.training.data import decode_batch

    model = MGIE.from_preset("mgie-tiny-init", seed=0, dtype=torch.float32)
    if system is not None:
        model.config.prompt = dataclasses.replace(model.config.prompt, system=system)
    module = MGIETrainModule(model, ObjectiveConfig(llm_blocks=True), frozen_cache=cached)
    rows = _rows(batch_size)
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-4)
    parts: dict[str, list[float]] = {k: [] for k in ("batch", "frozen", "llm_forward", "forward", "backward")}
    width = 0
    for step in range(steps + 2):  # the first two warm up (allocations; the cache fills on the first)
        t0 = time.perf_counter()
        data = decode_batch(rows, 64)
        batch = build_batch(
            model, data["inputs"], data["goals"], data["instructions"], data["expressive"], keys=data["keys"]
        )
        t1 = time.perf_counter()
        with torch.no_grad():  # what the frozen parts cost this step (nothing once cached)
            if not cached:
                module.vision(batch.clip_pixels)
                module.vae.encode(batch.goal_pixels)
                module.vae.encode(batch.input_pixels)
        t2 = time.perf_counter()
        with torch.no_grad():
            module.teacher_forced(batch)
        t3 = time.perf_counter()
        out = module(batch, torch.Generator().manual_seed(step))
        t4 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        t5 = time.perf_counter()
        width = batch.input_ids.shape[1]
        if step >= 2:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                parts[k].append(v * 1000)
    ms = {k: round(statistics.median(v), 1) for k, v in parts.items()}
    # a training step is batch + forward + backward; the two probes (frozen, llm_forward) only attribute
    ms["step"] = round(ms["batch"] + ms["forward"] + ms["backward"], 1)
    return {
        "system_text": "one line" if system is None else "reference",
        "frozen_cached": cached,
        "tokens_per_row": width,
        "median_ms": ms,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="bench/results/profile-step-mgie-tiny.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mgie.config import PromptConfig

    reference = PromptConfig().system
    runs = [
        profile(reference, False, args.steps, args.batch_size),  # before: reference text, no cache
        profile(None, False, args.steps, args.batch_size),  # the one-line system text
        profile(None, True, args.steps, args.batch_size),
    ]  # + frozen features cached (the recipe)
    base = runs[0]["median_ms"]["step"]
    for r in runs:
        r["speedup_vs_reference"] = round(base / r["median_ms"]["step"], 2)
        print(
            f"{r['system_text']:>9} text, cache {'on ' if r['frozen_cached'] else 'off'}: "
            f"{r['tokens_per_row']} tokens/row, {r['median_ms']}, x{r['speedup_vs_reference']}"
        )
    result = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "runs": runs,
        "note": "one process, runs in turn; the machine's other core was busy training",
    }
    save_figures(args.json, result, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
