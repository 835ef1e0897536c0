"""`mgie-batch edit --dry-run`: what a run would do, without doing it.

Reads only: the inputs (listing, manifest footers and headers), the run record and the commit records of the
output.
Writes nothing, deletes nothing (no orphan sweep), starts no Ray. The GPU memory figure is the weights of the
parts each actor holds at the run's dtype, from the model built on the meta device; activations come on top
(docs/deploy.md sizes them per GPU type).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import EditConfig

if TYPE_CHECKING:
    from pipeline.plan import RunExtension


@dataclass
class Plan:
    output: str
    sources: list[dict[str, Any]]  # {"url", "kind", "rows" (None: known once read), "rows_done"}
    fingerprint: str
    existing_run: str  # "none", "same configuration", or "DIFFERENT configuration: refused"
    layout: dict[str, Any]
    gpu_memory_gb: dict[str, float | None] = field(default_factory=dict)  # per actor kind: weights only

    @property
    def rows(self) -> int | None:
        counts = [s["rows"] for s in self.sources]
        return None if any(n is None for n in counts) else sum(counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "sources": self.sources,
            "rows": self.rows,
            "fingerprint": self.fingerprint,
            "existing_run": self.existing_run,
            "layout": self.layout,
            "gpu_memory_gb": self.gpu_memory_gb,
            "rows_done": sum(s["rows_done"] for s in self.sources),
        }


def make_plan(cfg: EditConfig, gpus: int | None = None, extension: "RunExtension | None" = None) -> Plan:
    """What the run of `cfg` would do. `extension`: the RunExtension of eval, make-dataset or the summarizer
    pass, whose identity joins the fingerprint exactly as in the run."""
    from pipeline.identity import resolve_identity
    from pipeline.inputs import checked_sources
    from pipeline.layout import OutputLayout
    from pipeline.ledger import load_state
    from pipeline.sources import count_rows, source_kind
    from pipeline.storage import Store

    store = Store.open(cfg.io.output_location)
    sources = checked_sources(cfg, store)  # the run's own checks, refusals included
    gpus = local_gpus() if gpus is None else gpus
    # the identity the run would have, extension included: its precision decided from the GPUs seen here, as
    # the layout below is
    fingerprint = resolve_identity(cfg, extension, lambda: gpus).fingerprint

    existing, done = "none", {}
    if store.exists(OutputLayout.RUN_RECORD):
        recorded = json.loads(store.read_bytes(OutputLayout.RUN_RECORD)).get("run_fingerprint")
        existing = (
            "same configuration: resumes"
            if recorded == fingerprint
            else "DIFFERENT configuration: the run would be refused"
        )
        done = load_state(store).committed_for_shard()
    rows = [
        {
            "url": u,
            "kind": source_kind(u),
            "rows": count_rows(cfg.io.reach.at(u)),
            "rows_done": sum(r["n_rows"] for r in done.get(u, {}).values()),
        }
        for u in sources
    ]

    res = cfg.compute.pick(gpus)
    pools = {"express+edit": res.fused()} if res.layout == "fused" else {"express": res.express, "edit": res.edit}
    layout = {
        "resources": res.name,
        "layout": res.layout,
        "gpus_seen": gpus,
        "pools": {
            k: {
                "actors": p.actors,
                "batch_size": p.batch_size,
                "gpus_per_actor": p.num_gpus,
                "cpus_per_actor": p.num_cpus,
            }
            for k, p in pools.items()
        },
    }
    return Plan(store.url, rows, fingerprint, existing, layout, weights_gb(cfg, pools))


def local_gpus() -> int:
    """GPUs this machine shows (Ray is not started for a dry run; a cluster's count may differ)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPUs
        return 0


def weights_gb(cfg: EditConfig, pools: dict[str, Any]) -> dict[str, float | None]:
    """GB of weights each actor of each pool holds (the parts it loads, at the dtype it would run in)."""
    if cfg.model.kind != "preset":
        return {name: None for name in pools}  # a checkpoint's sizes would need its weights read
    from mgie import MGIE
    from mgie.devices import resolve_dtype

    on_gpu = any(p.num_gpus > 0 for p in pools.values())
    bytes_per = resolve_dtype(cfg.model.dtype, "cuda" if on_gpu else "cpu").itemsize
    out = {}
    for name in pools:
        parts = {"express", "edit"} if name == "express+edit" else {name}
        model = MGIE.from_preset(cfg.model.source, seed=cfg.model.seed, parts=parts, device="meta")
        modules = [m for m in (model.vision, model.llm, model.edit_head, model.unet, model.vae) if m is not None]
        n = sum(p.numel() for m in modules for p in m.parameters())
        out[name] = round(n * bytes_per / 2**30, 3)
    return out


def format_plan(plan: Plan) -> str:
    kinds: dict[str, int] = {}
    for s in plan.sources:
        kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
    done = sum(s["rows_done"] for s in plan.sources)
    lines = [
        f"output     {plan.output} (existing run: {plan.existing_run})",
        f"sources    {len(plan.sources)} ({', '.join(f'{n} {k}' for k, n in kinds.items())})",
        f"rows       {plan.rows if plan.rows is not None else 'known once read (tar shards)'}, {done} already done",
        f"layout     {plan.layout['layout']} on preset {plan.layout['resources']} "
        f"({plan.layout['gpus_seen']} GPUs seen here)",
    ]
    for name, p in plan.layout["pools"].items():
        gb = plan.gpu_memory_gb.get(name)
        mem = (
            ""
            if gb is None
            else f", weights {gb:.2f} GB per actor"
            if gb >= 1
            else f", weights {gb * 1024:.1f} MB per actor"
        )
        lines.append(f"  {name:<12} {p['actors']} actor(s) x {p['gpus_per_actor']:g} GPU, batch {p['batch_size']}{mem}")
    for s in plan.sources[:20]:
        rows = "?" if s["rows"] is None else s["rows"]
        lines.append(f"  {s['kind']:<8} {s['url']}  rows {rows}, done {s['rows_done']}")
    if len(plan.sources) > 20:
        lines.append(f"  ... and {len(plan.sources) - 20} more sources")
    lines.append("dry run: nothing was started, written or deleted")
    return "\n".join(lines)
