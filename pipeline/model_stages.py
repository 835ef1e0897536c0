"""The model stages of the plan: callable classes that Ray Data runs in actor pools, one unit row per call.

    ExpressStage       (actor)  MLLM + edit head: expressive instruction + diffusion conditioning per row
    EditStage          (actor)  diffusion: the edited image per row, and its auto-QA figures (pipeline.quality)
    ExpressEditStage   (actor)  both parts in one actor per GPU ("fused" layout): while one unit diffuses on
                                the GPU, the next unit's MLLM runs on a side CUDA stream in a second thread

`ModelStage` is the public base of every model stage, plug-in stages (eval's metrics, the summarizer pass)
included: a subclass names the model parts it holds (`PARTS`), the sample fields it needs (`NEEDS`) and
implements `_run(batch)`. The base cuts a unit's pending rows into fixed sub-batches (the same unit always
meets the model in the same batches: identical pixels run after run, since numerics depend on batch
composition), times them, and isolates a bad row when the model refuses a batch.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from pipeline import faults
from pipeline.identity import SamplerSettings
from pipeline.quality import QASettings, QualityChecker
from pipeline.quarantine import UnitGuard, UnitGuardSettings, guarded_unit
from pipeline.rows import PENDING, fail, pack, require_columns, require_fields, unpack

MODEL_INPUT_ERRORS = (ValueError, TypeError)  # what mgie raises for invalid inputs; anything else is a bug


def sub_batches(
    samples: list[dict[str, Any]], size: int, bucket: Callable[[dict[str, Any]], Any] | None = None
) -> list[list[dict[str, Any]]]:
    """Fixed sub-batches of the pending rows, in row order; with `bucket`, rows of one bucket value only
    per batch, buckets in order of their first row (deterministic: the same unit, the same batches)."""
    todo = [s for s in samples if s["status"] == PENDING]
    groups: dict[Any, list[dict[str, Any]]] = {}
    for s in todo:
        groups.setdefault(bucket(s) if bucket else None, []).append(s)
    return [rows[i : i + size] for rows in groups.values() for i in range(0, len(rows), size)]


def work_size_bucket(sample: dict[str, Any]) -> tuple[int, ...]:
    """Diffusion batches rows of one working size: the sampler stacks their latents into one tensor."""
    return sample["pixels"].shape  # (h, w, 3)


def as_pil(pixels):
    """(H, W, 3) uint8 -> PIL RGB image, the type mgie's API takes."""
    from PIL import Image

    return Image.fromarray(pixels, "RGB")


def run_batches(
    samples: list[dict[str, Any]],
    stage: str,
    size: int,
    run: Callable[[list[dict[str, Any]]], None],
    bucket: Callable[[dict[str, Any]], Any] | None = None,
) -> None:
    """`run` over fixed sub-batches of the pending rows. A batch the model refuses (MODEL_INPUT_ERRORS) is
    redone row by row so that only the bad row(s) fail; each row gets its share of the call's time as
    `ms_<stage>`. Injected faults (tests) hit rows by key before the call."""

    def timed(batch: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        for s in batch:
            faults.maybe_fail(stage, s["key"])
            faults.maybe_crash_or_hang(stage, s["key"])
        run(batch)
        per_row = (time.perf_counter() - t0) * 1000.0 / len(batch)
        for s in batch:
            if s["status"] == PENDING:  # a row the stage failed has no time of its own
                s[f"ms_{stage}"] = per_row

    for batch in sub_batches(samples, size, bucket):
        try:
            timed(batch)
        except MODEL_INPUT_ERRORS:
            for s in batch:
                try:
                    timed([s])
                except MODEL_INPUT_ERRORS as e:
                    fail(s, stage, e)


class ModelStage:
    """Base of every model stage: loads `PARTS` of the model once per actor, then edits unit rows."""

    NAME = ""
    PARTS: set[str] = set()
    NEEDS: tuple[str, ...] = ()

    def __init__(
        self,
        model,
        batch_size: int,
        torch_threads: int = 0,
        fault_spec: str = "",
        guard: UnitGuardSettings | None = None,
    ):
        self.guard = guard
        if torch_threads and getattr(model, "kind", None) != "noop":  # no numerics in the noop model: no torch
            import torch

            torch.set_num_threads(torch_threads)
        faults.configure(fault_spec)
        self.editor = model.load(self.PARTS)
        self.batch_size = batch_size

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        require_columns(self.NAME, row, ("payload", "skip"))
        if row["skip"]:
            return row
        samples = unpack(row["payload"])
        require_fields(self.NAME, samples, self.NEEDS)
        faults.maybe_sleep(self.NAME)
        # a row that kills or hangs this worker ends as an error row of its own (pipeline/quarantine.py)
        with UnitGuard(self.guard, self.NAME, guarded_unit(row, self.guard)) as g:
            for rows in g.batches(samples):
                self.process(rows)
        row["payload"] = pack(samples)
        return row

    def process(self, samples: list[dict[str, Any]]) -> None:
        run_batches(samples, self.NAME, self.batch_size, self._run)

    def _run(self, batch: list[dict[str, Any]]) -> None:
        """The model call on pending rows: sets their output fields, or `fail`s the rows it cannot do."""
        raise NotImplementedError


def express_rows(editor, batch: list[dict[str, Any]], on_host: bool) -> None:
    """MLLM + edit head on a batch: `expressive_instruction`, `instruction_truncated` and `conditioning`
    (S, C) per row; on the host as float32 numpy when the rows travel to another actor, else left on the
    model's device (a slice of the batch tensor)."""
    import numpy as np

    expr = editor.express([as_pil(s["pixels"]) for s in batch], [s["instruction"] for s in batch])
    cond = expr.conditioning  # (B, S, C)
    if on_host:
        cond = cond.float().cpu().numpy() if hasattr(cond, "cpu") else np.asarray(cond, np.float32)
    for i, s in enumerate(batch):
        s["expressive_instruction"] = expr.texts[i]
        s["instruction_truncated"] = bool(expr.truncated[i])  # over the model's token limit: the output says so
        s["conditioning"] = cond[i]  # (S, C)


def edit_rows(editor, batch: list[dict[str, Any]], sample: SamplerSettings, qa: QualityChecker | None = None) -> None:
    """Diffusion on a batch: `edited` (H, W, 3) uint8 per row from its own seed, then its auto-QA figures
    (pipeline.quality) on the same device. The conditioning is dropped afterwards: nothing downstream reads
    it and it is the largest field a row carries."""
    import numpy as np

    parts = [s["conditioning"] for s in batch]
    if hasattr(editor, "device"):
        import torch

        if isinstance(parts[0], torch.Tensor):
            cond = torch.stack(parts).to(editor.device, editor.dtype)  # (B, S, C), already on the device
        else:
            cond = torch.from_numpy(np.stack(parts)).to(editor.device, editor.dtype)  # (B, S, C)
    else:
        cond = np.stack(parts)
    settings = dict(
        num_inference_steps=sample.num_inference_steps,
        guidance_scale=sample.guidance_scale,
        image_guidance_scale=sample.image_guidance_scale,
        rng=sample.rng,
        strength=sample.strength,
    )
    inputs, seeds = [as_pil(s["pixels"]) for s in batch], [s["seed"] for s in batch]
    if sample.detail_reference == "reconstruction" and hasattr(editor, "sample_and_reconstruct"):
        # the VAE's round trip of each input, the reference the output's detail is added against, from the
        # sampler's own image latents: one more decode, no second encode
        out, round_trips = editor.sample_and_reconstruct(inputs, cond, seeds, **settings)
        for s, img in zip(batch, round_trips):
            s["reconstruction"] = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (h, w, 3)
    else:
        out = editor.sample(inputs, cond, seeds, **settings)
    for s, img in zip(batch, out):
        s["edited"] = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (h, w, 3), the working size
        del s["conditioning"]
    if qa is not None:
        qa.score(batch)


class ExpressStage(ModelStage):
    """MLLM + edit head (`parts={"express"}`): expressive instruction and conditioning per row."""

    NAME, PARTS, NEEDS = "express", {"express"}, ("pixels", "instruction")

    def _run(self, batch):
        express_rows(self.editor, batch, on_host=True)


def quality_checker(editor, settings: QASettings | None) -> QualityChecker:
    """The auto-QA of an edit actor, on its editor's device (the noop editor has none: the CPU)."""
    return QualityChecker(settings or QASettings(), getattr(editor, "device", "cpu"))


class EditStage(ModelStage):
    """Diffusion (`parts={"edit"}`): the edited image per row, from its own seed, and its QA figures."""

    NAME, PARTS, NEEDS = "edit", {"edit"}, ("pixels", "conditioning", "seed")

    def __init__(
        self,
        model,
        batch_size: int,
        sample: SamplerSettings,
        torch_threads: int = 0,
        fault_spec: str = "",
        qa: QASettings | None = None,
        guard: UnitGuardSettings | None = None,
    ):
        super().__init__(model, batch_size, torch_threads, fault_spec, guard)
        self.sample, self.qa = sample, quality_checker(self.editor, qa)

    def process(self, samples: list[dict[str, Any]]) -> None:
        run_batches(samples, self.NAME, self.batch_size, self._run, bucket=work_size_bucket)

    def _run(self, batch):
        edit_rows(self.editor, batch, self.sample, self.qa)


class ExpressEditStage(ModelStage):
    """Both model parts in one actor per GPU (the "fused" layout, docs/performance.md).

    Ray runs two calls of this actor at once (`CONCURRENT_CALLS`): each unit takes the express lock for its
    MLLM work, then the edit lock for its diffusion, so unit k+1's MLLM overlaps unit k's diffusion. The
    MLLM runs on its own CUDA stream (the current stream is per thread), so its small decode kernels fill
    the gaps of the diffusion stream. Batching is that of the split layout (`express_batch_size` rows per
    MLLM call, `batch_size` per diffusion call): the same rows give the same pixels in either layout.
    """

    NAME, PARTS, NEEDS = "express+edit", {"express", "edit"}, ("pixels", "instruction", "seed")
    CONCURRENT_CALLS = 2  # one unit in the MLLM, one in diffusion

    def __init__(
        self,
        model,
        batch_size: int,
        express_batch_size: int,
        sample: SamplerSettings,
        torch_threads: int = 0,
        fault_spec: str = "",
        qa: QASettings | None = None,
        guard: UnitGuardSettings | None = None,
    ):
        super().__init__(model, batch_size, torch_threads, fault_spec, guard)
        self.express_batch_size, self.sample = express_batch_size, sample
        self.qa = quality_checker(self.editor, qa)
        self._express_lock, self._edit_lock = threading.Lock(), threading.Lock()
        self._warm_shapes: set[tuple[int, ...]] = set()  # diffusion batch shapes already run (compiled)
        self._stream = None
        device = getattr(self.editor, "device", None)
        if device is not None and device.type == "cuda":
            import sys

            import torch

            self._stream = torch.cuda.Stream(device=device)
            # the diffusion thread needs the interpreter briefly between kernel launches; do not make it
            # wait the default 5 ms while the MLLM thread runs Python
            sys.setswitchinterval(0.0005)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        faults.maybe_sleep("express")
        faults.maybe_sleep("edit")
        return super().__call__(row)

    def process(self, samples: list[dict[str, Any]]) -> None:
        with self._express_lock:
            run_batches(samples, "express", self.express_batch_size, self._express)
        with self._edit_lock:
            run_batches(samples, "edit", self.batch_size, self._edit, bucket=work_size_bucket)

    def _edit(self, batch: list[dict[str, Any]]) -> None:
        shape = (len(batch), *batch[0]["pixels"].shape)  # (B, H, W, 3)
        if shape in self._warm_shapes:
            return edit_rows(self.editor, batch, self.sample, self.qa)
        # a batch shape the compiled UNet has not seen compiles now, and compiling traces through a
        # process-wide patch of module calls that would catch the MLLM thread's modules too: run it alone
        with self._express_lock:
            edit_rows(self.editor, batch, self.sample, self.qa)
        self._warm_shapes.add(shape)

    def _express(self, batch: list[dict[str, Any]]) -> None:
        if self._stream is None:
            return express_rows(self.editor, batch, on_host=False)
        import torch

        with torch.cuda.stream(self._stream):
            express_rows(self.editor, batch, on_host=False)
        self._stream.synchronize()  # the conditioning is complete before the diffusion stream reads it
        for s in batch:
            if "conditioning" in s:
                # made on the side stream, read on the diffusion thread's stream: keep the allocator from
                # reusing its memory until that stream is done with it
                s["conditioning"].record_stream(torch.cuda.default_stream(self._stream.device))
