"""A run's identity: everything that decides its outputs, and the fingerprint that names it.

    run = resolve_identity(cfg, extension, cluster.gpus)
    run.fingerprint    # in the run record, every commit record and every ledger row
    run.spec           # the model recipe the actors load, with the device and dtype decided here

The driver resolves it once, before anything is written; `--dry-run` of every job on the plan calls the
same function with the same extension, to tell whether an output would resume or be refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.config import (
    EditConfig,
    SamplerSettings,
    fingerprint_of,
    resolve_precision,
    resolve_sampler,
    run_identity,
)
from pipeline.editors import ModelSpec


@dataclass(frozen=True)
class RunIdentity:
    spec: ModelSpec  # cfg.model with the resolved device and dtype: what the actors load
    model: dict[str, Any]  # ModelSpec.describe(): kind, name, fingerprint, config
    sampler: SamplerSettings
    run_seed: int
    precision: dict[str, str] | None  # {"device", "dtype"}; None for the noop model
    identity: dict[str, Any]
    fingerprint: str


def resolve_identity(cfg: EditConfig, extension: Any, cluster_gpus: Callable[[], float]) -> RunIdentity:
    """The run's identity. `extension`: None, or the `pipeline.plan.RunExtension` of another job on this plan
    (eval, make-dataset, the summarizer pass), whose `identity` joins it (typed Any: plan imports this
    module). `cluster_gpus` is asked only when the precision check needs the cluster's GPU count."""
    from pipeline.clip_qa import check_clip

    model = cfg.model.describe()
    qa_clip = check_clip(cfg.qa_clip, cfg.qa().storage_options) if cfg.qa_clip else None  # loads, before any work
    sampler, run_seed = resolve_sampler(cfg, model["config"])
    precision = resolve_precision(cfg.model, model["kind"], cfg.resources, cluster_gpus)
    spec = cfg.model if precision is None else dataclasses.replace(cfg.model, **precision)  # actors use these
    extra = extension.identity if extension is not None else {}
    identity = {**run_identity(cfg, model, sampler, run_seed, precision, qa_clip), **extra}
    return RunIdentity(spec, model, sampler, run_seed, precision, identity, fingerprint_of(identity))
