"""The eval plan: edit every row, then score the edit against the row's goal image.

    read -> decode -> express -> edit -> metrics (actor) -> write

The metrics stage adds `metric_<name>` to each row (None where the row has no goal image, or no text for
CLIP-T); the write stage puts them into the ledger and the per-sample JSON. After the last commit the job
aggregates the committed ledger into `metrics.json` and `metrics.md` (mean, std and row count per metric).
The goal gets the same decode (EXIF orientation, 16-bit scaling, transparency over white) and the same
working image (`--resize`: the centre square for crop, the whole picture for fit and reference) as the input,
so the edit and the goal cover the same region, seen the same way.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from pipeline.config import Resources, StageResources
from pipeline.fields import metric_field
from pipeline.layout import OutputLayout
from pipeline.model_stages import ModelStage, as_pil
from pipeline.plan import RunExtension, actor_map, express_and_edit
from pipeline.rows import fail
from pipeline.viewing import as_viewed_rgb

# What `--metrics` may name. Also here, not only in pipeline.evaluation.metrics, because that module imports torch and
# the command line lists these names in --help.


@dataclass(frozen=True)
class MetricsSpec:
    """A picklable recipe each metrics actor turns into a `MetricSuite`."""

    config: Any  # pipeline.evaluation.metrics.MetricsConfig
    resolution: int  # with `resize`, the run's: a goal's working image is made as its input's was
    device: str = "auto"
    resize: str = "crop"  # the run's --resize

    def load(self, parts=None):
        from mgie.devices import resolve_device
        from pipeline.evaluation.metrics import MetricSuite

        return MetricSuite(self.config, device=resolve_device(self.device))


class MetricsStage(ModelStage):
    """Scores each edited image against its goal (and CLIP-T against its caption or instruction)."""

    NAME, PARTS, NEEDS = "metrics", set(), ("edited", "instruction")

    def __init__(self, model: MetricsSpec, batch_size: int, torch_threads: int = 0, fault_spec: str = ""):
        super().__init__(model, batch_size, torch_threads, fault_spec)
        self.resolution = model.resolution
        self.resize = model.resize

    def _goal(self, s: dict[str, Any]):
        from PIL import Image

        from mgie.images import work_image

        data = s.get("goal")
        if data is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return work_image(as_viewed_rgb(img), self.resize, self.resolution)  # decoded like the inputs
        except Exception as e:  # PIL raises many types for bad bytes
            raise ValueError(f"goal image unreadable ({type(e).__name__}: {e}, {len(data)} bytes)") from None

    def _run(self, batch):
        scorable, goals = [], []
        for s in batch:
            try:
                goals.append(self._goal(s))
                scorable.append(s)
            except ValueError as e:
                fail(s, "metrics", e)
        if not scorable:
            return
        texts = [(s.get("meta") or {}).get("caption") or s["instruction"] for s in scorable]
        values = self.editor.score([as_pil(s["edited"]) for s in scorable], goals, texts)
        for i, s in enumerate(scorable):
            for name, column in values.items():
                s[f"metric_{name}"] = column[i]
            s.pop("goal", None)  # scored: the bytes need not travel further


def metrics_resources(res: Resources, batch_size: int | None) -> StageResources:
    """Small models (CLIP B/32, DINO S/16, AlexNet): one actor with a small slice of the express slot."""
    gpu = res.express.num_gpus
    return StageResources(
        batch_size or 16, 1, min(gpu, 0.1) if gpu else 0.0, min(res.express.num_cpus, 1.0), 2.0 if gpu else 0.5
    )


def eval_extension(
    model, metrics_config, resolution: int, batch_size: int | None = None, device: str = "auto", resize: str = "crop"
) -> RunExtension:
    """`resize`: the run's --resize; the goals' working images are made with it (already in the identity)."""
    from mgie.images import RESIZE_MODES
    from pipeline.evaluation.metrics import suite_fingerprint
    from pipeline.refusals import BadSetting

    if resize not in RESIZE_MODES:
        raise BadSetting(f"--resize must be one of {', '.join(RESIZE_MODES)} to score edits, got {resize!r}")
    spec = MetricsSpec(metrics_config, resolution, device, resize)
    columns = tuple(metric_field(m) for m in metrics_config.metrics)

    def middle(ds, res, sample, fault_spec, qa=None):
        ds = express_and_edit(ds, res, model, sample, fault_spec, qa)
        return actor_map(
            ds,
            MetricsStage,
            metrics_resources(res, batch_size),
            model=spec,
            torch_threads=res.torch_threads,
            fault_spec=fault_spec,
        )

    def finish(store, summary):
        return write_aggregate(store, list(metrics_config.metrics))

    return RunExtension(
        identity={
            "job": "eval",
            "metrics": {"names": list(metrics_config.metrics), "fingerprint": suite_fingerprint(metrics_config)},
        },
        middle=middle,
        write={"extra_fields": columns},
        finish=finish,
    )


def write_aggregate(store, metrics: list[str]) -> dict[str, Any]:
    """metrics.json and metrics.md from the committed ledger (every row of the run, resumed ones too)."""
    from pipeline.evaluation.metrics import aggregate, markdown_table
    from pipeline.ledger import read_ledger

    table = read_ledger(store.url, storage_options=store.options)
    values = {
        m: (table[f"metric_{m}"].to_numpy(zero_copy_only=False) if f"metric_{m}" in table.column_names else [])
        for m in metrics
    }
    result = aggregate(values)
    ok = int(sum(1 for s in table["status"].to_pylist() if s == "ok")) if table.num_rows else 0
    doc = {"rows": table.num_rows, "ok": ok, "metrics": result}
    store.write_atomic(OutputLayout.METRICS_JSON, json.dumps(doc, indent=2, sort_keys=True).encode())
    header = f"# Evaluation of {store.url}\n\n{table.num_rows} rows in the ledger, {ok} edited.\n\n"
    store.write_atomic(OutputLayout.METRICS_MD, (header + markdown_table(result)).encode())
    return {"metrics": result}
