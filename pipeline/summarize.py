"""The summarizer pass as pipeline stages, and the plans that use it.

    explain    (actor, MGIE `express` part)  the MLLM's paragraph on what the edited image will be like
    summarize  (actor, Flan-T5-class model)  that paragraph -> the concise expressive instruction
    condition  (actor, MGIE `express` part)  conditioning for the summary (prompt + summary + [IMG] states)

`make-dataset` runs read -> decode -> explain -> summarize [-> condition -> edit] -> write and stores
IPr2Pr-style triplets; `edit --expressive summarize` runs read -> decode -> explain -> summarize ->
condition -> edit -> write. Both go through `run_edit` (same commit protocol, ledger and resume) with a
`RunExtension`. The summarizer is its own actor with its own batch size: it is a different model (up to
11B parameters) with its own best batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Resources, StageResources
from pipeline.fields import SUMMARY_FIELDS
from pipeline.model_stages import EditStage, ModelStage, as_pil
from pipeline.plan import RunExtension, actor_map
from pipeline.rows import fail


@dataclass(frozen=True)
class SummarizerSpec:
    """A picklable recipe each summarize actor turns into a `Summarizer`."""

    source: str = "tiny"  # summarizer preset (tiny, flan-t5-xxl: random weights) or an HF T5 directory / URL
    seed: int = 0  # weight seed of a preset
    device: str = "auto"  # auto: cuda when the actor has a GPU, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda (T5 overflows in float16), float32 on cpu
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_preset(self) -> bool:
        from mgie.summarizer import SUMMARIZER_PRESETS

        return self.source in SUMMARIZER_PRESETS

    def describe(self) -> dict[str, Any]:
        """Identity for the run fingerprint without loading weights: a preset's seed and config, or a
        directory's config.json and its file names and sizes."""
        if self.is_preset:
            from mgie.summarizer import preset_fingerprint, summarizer_preset

            return {
                "source": self.source,
                "fingerprint": preset_fingerprint(self.source, self.seed),
                "config": summarizer_preset(self.source).to_dict(),
            }
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.source, **self.storage_options)
        root = root.rstrip("/")
        if not fs.exists(f"{root}/config.json"):
            raise FileNotFoundError(
                f"--summarizer {self.source}: no config.json there; expected a preset "
                f"(tiny, flan-t5-xxl) or a T5 / Flan-T5 directory in transformers' layout"
            )
        from mgie.checkpoint import file_sizes
        from mgie.summarizer import SummarizerConfig

        listing = file_sizes(fs, root)
        digest = hashlib.sha256(json.dumps([fs.cat_file(f"{root}/config.json").decode(), listing]).encode())

        generation = {k: v for k, v in SummarizerConfig().to_dict().items() if k not in ("name", "model")}
        return {"source": self.source, "fingerprint": digest.hexdigest(), "config": generation}

    def load(self, parts=None):
        import torch

        from mgie import Summarizer
        from mgie.devices import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device, half=torch.bfloat16)  # T5 overflows in float16
        if self.is_preset:
            return Summarizer.from_preset(self.source, seed=self.seed, device=device, dtype=dtype)
        return Summarizer.from_pretrained(
            self.source, storage_options=self.storage_options or None, device=device, dtype=dtype
        )


# ---------------------------------------------------------------------------------------------- stages


class ExplainStage(ModelStage):
    """MLLM (`express` part): the detailed paragraph of the summarizer pass's first step."""

    NAME, PARTS, NEEDS = "explain", {"express"}, ("pixels", "instruction")

    def _run(self, batch):
        texts = self.editor.explain([as_pil(s["pixels"]) for s in batch], [s["instruction"] for s in batch])
        for s, text in zip(batch, texts):
            s["explanation"] = text


class SummarizeStage(ModelStage):
    """Flan-T5-class summarizer: explanation -> concise expressive instruction (`summary`)."""

    NAME, PARTS, NEEDS = "summarize", set(), ("explanation",)

    def _run(self, batch):
        ready = []
        for s in batch:
            if s["explanation"].strip():
                ready.append(s)
            else:  # the MLLM stopped at once: there is nothing to summarize
                fail(s, "explain", "the MLLM produced an empty explanation")
        if not ready:
            return
        summaries = self.editor.summarize([s["explanation"] for s in ready])
        for s, text in zip(ready, summaries):
            if not text.strip():
                fail(s, "summarize", "the summarizer produced an empty summary")
                continue
            s["summary"] = text
            s["expressive_instruction"] = text  # the concise expressive instruction of this row


class ConditionStage(ModelStage):
    """MLLM + edit head (`express` part): diffusion conditioning for the row's summary."""

    NAME, PARTS, NEEDS = "express", {"express"}, ("pixels", "instruction", "summary")

    def _run(self, batch):
        expr = self.editor.express_with_text(
            [as_pil(s["pixels"]) for s in batch], [s["instruction"] for s in batch], [s["summary"] for s in batch]
        )
        cond = expr.conditioning.float().cpu().numpy()  # (B, S, C)
        for i, s in enumerate(batch):
            s["expressive_instruction"] = s["summary"]
            s["conditioning"] = cond[i]  # (S, C)


# ---------------------------------------------------------------------------------------------- plans


def summarizer_resources(res: Resources, batch_size: int | None) -> StageResources:
    """The summarize stage: the express stage's slot, with its own batch size (beam search x 5)."""
    return dataclasses.replace(res.express, batch_size=batch_size or max(1, res.express.batch_size // 2))


@dataclass(frozen=True)
class SummaryPass:
    """The settings the summarizer-pass plans share."""

    model: Any  # pipeline.editors.ModelSpec of the MGIE model
    summarizer: SummarizerSpec
    summarize_batch_size: int | None = None

    def identity(self) -> dict[str, Any]:
        return {"summarizer": self.summarizer.describe()}

    def explain_and_summarize(self, ds, res: Resources, fault_spec: str):
        common = {"torch_threads": res.torch_threads, "fault_spec": fault_spec}
        ds = actor_map(ds, ExplainStage, res.express, model=self.model, **common)
        return actor_map(
            ds, SummarizeStage, summarizer_resources(res, self.summarize_batch_size), model=self.summarizer, **common
        )

    def condition_and_edit(self, ds, res: Resources, sample, fault_spec: str, qa=None):
        common = {"torch_threads": res.torch_threads, "fault_spec": fault_spec}
        ds = actor_map(ds, ConditionStage, res.express, model=self.model, **common)
        return actor_map(ds, EditStage, res.edit, model=self.model, sample=sample, qa=qa, **common)


def make_dataset_extension(p: SummaryPass, edit: bool) -> RunExtension:
    """make-dataset: triplets of input image (+ goal), instruction, explanation, summary [, edited image]."""

    def middle(ds, res, sample, fault_spec, qa=None):
        ds = p.explain_and_summarize(ds, res, fault_spec)
        return p.condition_and_edit(ds, res, sample, fault_spec, qa) if edit else ds

    return RunExtension(
        identity={"job": "make-dataset", "edit": edit, **p.identity()},
        middle=middle,
        write={"extra_fields": SUMMARY_FIELDS, "dataset_rows": True, "edited_optional": not edit},
    )


def summarize_edit_extension(p: SummaryPass) -> RunExtension:
    """edit --expressive summarize: the edit follows the summary instead of MGIE's own generation."""

    def middle(ds, res, sample, fault_spec, qa=None):
        return p.condition_and_edit(p.explain_and_summarize(ds, res, fault_spec), res, sample, fault_spec, qa)

    return RunExtension(
        identity={"expressive": "summarize", **p.identity()}, middle=middle, write={"extra_fields": SUMMARY_FIELDS}
    )
