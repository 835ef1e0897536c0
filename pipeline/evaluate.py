"""The eval plan: edit every row, then score the edit against the row's goal image.

    read -> decode -> express -> edit -> metrics (actor) -> write

The metrics stage adds `metric_<name>` to each row (None where the row has no goal image, or no text for
CLIP-T); the write stage puts them into the ledger and the per-sample JSON. After the last commit the job
aggregates the committed ledger into `metrics.json` and `metrics.md` (mean, std and row count per metric).
The goal gets the same centre crop and resize as the input, so the edit and the goal cover the same region.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

from . import faults
from .config import Resources, StageResources
from .rows import fail
from .run import RunExtension
from .stages import EditStage, ExpressStage, _ModelStage, _ms, _pil
from .summarize import actor_map


@dataclass(frozen=True)
class MetricsSpec:
    """A picklable recipe each metrics actor turns into a `MetricSuite`."""

    config: Any  # pipeline.metrics.MetricsConfig
    resolution: int  # the run's working resolution: goals are cropped and resized like the inputs
    device: str = "auto"

    def load(self, parts=None):
        import torch

        from .metrics import MetricSuite

        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return MetricSuite(self.config, device=device)


class MetricsStage(_ModelStage):
    """Scores each edited image against its goal (and CLIP-T against its caption or instruction)."""

    NAME, PARTS, NEEDS = "metrics", set(), ("edited", "instruction")

    def __init__(self, model: MetricsSpec, batch_size: int, torch_threads: int = 0, fault_spec: str = ""):
        super().__init__(model, batch_size, torch_threads, fault_spec)
        self.resolution = model.resolution

    def _goal(self, s: dict[str, Any]):
        from PIL import Image

        from mgie import preprocess_image

        data = s.get("goal")
        if data is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return preprocess_image(img.convert("RGB"), self.resolution)
        except Exception as e:  # PIL raises many types for bad bytes
            raise ValueError(f"goal image unreadable ({type(e).__name__}: {e}, {len(data)} bytes)") from None

    def _run(self, batch):
        t0 = time.perf_counter()
        scorable, goals = [], []
        for s in batch:
            faults.maybe_fail("metrics", s["key"])
            try:
                goals.append(self._goal(s))
                scorable.append(s)
            except ValueError as e:
                fail(s, "metrics", e)
        if not scorable:
            return
        texts = [(s.get("meta") or {}).get("caption") or s["instruction"] for s in scorable]
        values = self.editor.score([_pil(s["edited"]) for s in scorable], goals, texts)
        per_row = _ms(t0) / len(batch)
        for i, s in enumerate(scorable):
            for name, column in values.items():
                s[f"metric_{name}"] = column[i]
            s.pop("goal", None)  # scored: the bytes need not travel further
            s["ms_metrics"] = per_row


def metrics_resources(res: Resources, batch_size: int | None) -> StageResources:
    """Small models (CLIP B/32, DINO S/16, AlexNet): one actor with a small slice of the express slot."""
    gpu = res.express.num_gpus
    return StageResources(batch_size or 16, 1, min(gpu, 0.1) if gpu else 0.0, min(res.express.num_cpus, 1.0),
                          2.0 if gpu else 0.5)


def eval_extension(model, metrics_config, resolution: int, batch_size: int | None = None,
                   device: str = "auto") -> RunExtension:
    from .metrics import suite_fingerprint

    spec = MetricsSpec(metrics_config, resolution, device)
    columns = tuple((f"metric_{m}", "float64") for m in metrics_config.metrics)

    def middle(ds, res, sample, fault_spec):
        common = {"torch_threads": res.torch_threads, "fault_spec": fault_spec}
        ds = actor_map(ds, ExpressStage, res.express, model=model, **common)
        ds = actor_map(ds, EditStage, res.edit, model=model, sample=sample, **common)
        return actor_map(ds, MetricsStage, metrics_resources(res, batch_size), model=spec, **common)

    def finish(store, summary):
        return write_aggregate(store, list(metrics_config.metrics))

    return RunExtension(
        identity={"job": "eval", "metrics": {"names": list(metrics_config.metrics),
                                             "fingerprint": suite_fingerprint(metrics_config)}},
        middle=middle, write={"extra_columns": columns}, finish=finish)


def write_aggregate(store, metrics: list[str]) -> dict[str, Any]:
    """metrics.json and metrics.md from the committed ledger (every row of the run, resumed ones too)."""
    from .ledger import read_ledger
    from .metrics import aggregate, markdown_table

    table = read_ledger(store.url, storage_options=store.options)
    values = {m: (table[f"metric_{m}"].to_numpy(zero_copy_only=False) if f"metric_{m}" in table.column_names
                  else []) for m in metrics}
    result = aggregate(values)
    ok = int(sum(1 for s in table["status"].to_pylist() if s == "ok")) if table.num_rows else 0
    doc = {"rows": table.num_rows, "ok": ok, "metrics": result}
    store.write_atomic("metrics.json", json.dumps(doc, indent=2, sort_keys=True).encode())
    header = f"# Evaluation of {store.url}\n\n{table.num_rows} rows in the ledger, {ok} edited.\n\n"
    store.write_atomic("metrics.md", (header + markdown_table(result)).encode())
    return {"metrics": result}
