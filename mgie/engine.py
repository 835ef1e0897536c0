"""Overlapped editing on one device: the MLLM works on the next chunk while the current chunk diffuses.

The MLLM's greedy decoding is bound by the host (one small step per token), diffusion by the GPU's
arithmetic; run one after the other, the GPU idles during decoding. Here a worker thread runs `express`
on its own CUDA stream, chunk after chunk, while the calling thread samples. Outputs are exactly those of
`MGIE.edit` on the same rows and seeds, up to the float rounding that another MLLM batch size brings:
only the order of work changes.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Sequence

import torch
from PIL import Image

from .images import check_images, check_texts
from .model import MGIE, EditResult, Expression


@contextmanager
def _short_switch_interval(seconds: float):
    # the sampling thread needs the interpreter briefly once per step; do not make it wait 5 ms for it
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class OverlappedEditor:
    def __init__(self, model: MGIE, express_batch: int = 32, sample_batch: int = 16):
        if express_batch < 1 or sample_batch < 1:
            raise ValueError(f"batch sizes must be >= 1, got express {express_batch}, sample {sample_batch}")
        self.model, self.express_batch, self.sample_batch = model, express_batch, sample_batch
        self._stream = torch.cuda.Stream(device=model.device) if model.device.type == "cuda" else None

    def _express(self, images: list[Image.Image], instructions: list[str]) -> Expression:
        if self._stream is None:
            return self.model.express(images, instructions)
        with torch.cuda.stream(self._stream):
            expr = self.model.express(images, instructions)
        self._stream.synchronize()  # the conditioning is complete before another stream reads it
        return expr

    def edit(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[str],
        seeds: Sequence[int],
        num_inference_steps: int | None = None,
        rng: str | None = None,
    ) -> EditResult:
        """images: already at the working resolution (see preprocess_image). rng: as `MGIE.sample`."""
        images = check_images(images)
        instructions = check_texts(instructions, len(images))
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(images):
            raise ValueError(f"seeds has {len(seeds)} entries but there are {len(images)} images")
        bounds = [(lo, min(lo + self.express_batch, len(images))) for lo in range(0, len(images), self.express_batch)]
        out_images: list[Image.Image] = []
        texts: list[str] = []
        with ThreadPoolExecutor(max_workers=1) as worker, _short_switch_interval(0.0005):
            pending = [worker.submit(self._express, images[lo:hi], instructions[lo:hi]) for lo, hi in bounds]
            for (lo, hi), future in zip(bounds, pending):
                expr = future.result()
                cond = expr.conditioning
                if self._stream is not None:
                    cond.record_stream(torch.cuda.current_stream())  # made on the worker's stream, used here
                texts += expr.texts
                for start in range(lo, hi, self.sample_batch):
                    end = min(start + self.sample_batch, hi)
                    out_images += self.model.sample(
                        images[start:end], cond[start - lo : end - lo], seeds[start:end], num_inference_steps, rng=rng
                    )
        return EditResult(images=out_images, expressive_instructions=texts, seeds=seeds)
