"""The Ray Data plan of a run: read -> decode -> model stages (actor pools) -> write, one unit per row.

    units, res = stream_units(cfg, items, run, store, fault_spec, extension, cluster)
    for meta in units: ...        # the write stage's row per written unit, for the committer

The plan is lazy and streams: nothing is materialised, and units reach the committer one by one. Other jobs
on this plan (eval, make-dataset, edit --expressive summarize) change it through a `RunExtension`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pipeline import terminal
from pipeline.cluster import RunCluster
from pipeline.config import EditConfig, Resources, StageResources
from pipeline.editors import ModelSpec
from pipeline.identity import RunIdentity, SamplerSettings
from pipeline.model_stages import EditStage, ExpressEditStage, ExpressStage
from pipeline.quality import QASettings
from pipeline.quarantine import UnitGuardSettings
from pipeline.stages import DecodeSettings, ReadSettings, WriteSettings, decode_unit, read_shard, write_unit
from pipeline.storage import Store


@dataclass
class RunExtension:
    """What another job on this plan (eval, make-dataset, edit --expressive summarize) changes.

    `identity` joins the run identity (a changed summarizer or metric model is another run); `middle`
    replaces the stages between decode and write (default: `express_and_edit`) and gets (ds, resources,
    sampler settings, fault spec, QA settings); `write` sets extra WriteSettings fields; `finish` runs after
    the last commit with (store, summary) and may return extra summary entries.
    """

    identity: dict[str, Any]
    middle: Callable[..., Any] | None = None
    write: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[Store, dict[str, Any]], dict[str, Any] | None] | None = None


def actor_map(ds, stage_cls, stage: StageResources, **kwargs):
    """One actor-pool model stage of the plan: `stage_cls(batch_size=..., **kwargs)` per actor; a stage
    class with `CONCURRENT_CALLS` > 1 gets that many calls running at once in each actor (threads)."""
    import ray.data

    concurrent = getattr(stage_cls, "CONCURRENT_CALLS", 1)
    pool = {"size": stage.actors}
    if concurrent > 1:
        pool.update(max_concurrent_calls_per_actor=concurrent, enable_true_multi_threading=True)
    return ds.map(
        stage_cls,
        fn_constructor_kwargs={**kwargs, "batch_size": stage.batch_size},
        compute=ray.data.ActorPoolStrategy(**pool),
        num_gpus=stage.num_gpus,
        num_cpus=stage.num_cpus,
        memory=stage.memory_gb * 2**30,
    )


def express_and_edit(
    ds,
    res: Resources,
    model,
    sample: SamplerSettings,
    fault_spec: str,
    qa: QASettings | None = None,
    guard: UnitGuardSettings | None = None,
):
    """The edit plan's model stages: expressive instruction + conditioning, then diffusion and its auto-QA;
    in two actor pools (`split` layout) or in one actor per GPU holding both parts (`fused`)."""
    common = {"model": model, "torch_threads": res.torch_threads, "fault_spec": fault_spec, "guard": guard}
    if res.layout == "fused":
        return actor_map(
            ds, ExpressEditStage, res.fused(), express_batch_size=res.express.batch_size, sample=sample, qa=qa, **common
        )
    ds = actor_map(ds, ExpressStage, res.express, **common)
    return actor_map(ds, EditStage, res.edit, sample=sample, qa=qa, **common)


def build_dataset(
    items: list[dict[str, Any]],
    res: Resources,
    model: ModelSpec,
    read: ReadSettings,
    decode: DecodeSettings,
    sample: SamplerSettings,
    write: WriteSettings,
    fault_spec: str,
    middle: Callable[..., Any] | None = None,
    qa: QASettings | None = None,
    guard: UnitGuardSettings | None = None,
):
    """The lazy Ray Data plan, one unit per row (see pipeline.rows). With `guard`, the decode, model and
    write stages quarantine the rows that kill or hang their workers (pipeline/quarantine.py)."""
    import ray.data

    # One unit per block: a unit is already a batch (MBs at real sizes), and single-unit blocks let units
    # flow to the next stage, the actors and the committer one by one instead of a shard at a time. The
    # dataset keeps the context it was created with, so the global default is restored right after.
    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = 1
    try:
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4096)))
    finally:
        ctx.target_max_block_size = saved
    ds = ds.flat_map(read_shard, fn_kwargs={"settings": read}, num_cpus=res.read_cpus)
    decode_kwargs = {"settings": decode, "guard": guard, "fault_spec": fault_spec}
    ds = ds.map(decode_unit, fn_kwargs=decode_kwargs, num_cpus=res.read_cpus)
    if middle is not None:
        ds = middle(ds, res, sample, fault_spec, qa)
    else:
        ds = express_and_edit(ds, res, model, sample, fault_spec, qa, guard)
    return ds.map(write_unit, fn_kwargs={"settings": write, "guard": guard}, num_cpus=res.write_cpus)


def configure_ray_data(cfg: EditConfig) -> None:
    """The process-wide Ray Data settings a run needs (the dataset keeps those it was created with)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # a stage's own exception type reaches the driver (a refusing store's PermissionError stays one)
    ctx.raise_original_map_exception = True
    if cfg.io.limit is not None:
        # a trial run takes the inputs in the order given: units reach the committer in input order
        # (a slow first source holds the others back, which a short trial run can afford)
        ctx.execution_options.preserve_order = True
    if cfg.run.progress or not terminal.verbose():
        # our own bar; Ray's bars would fight it for the terminal (or fill the log file with redraws)
        ctx.enable_progress_bars = False


def stream_units(
    cfg: EditConfig,
    items: list[dict[str, Any]],
    run: RunIdentity,
    store: Store,
    fault_spec: str,
    extension: RunExtension | None,
    cluster: RunCluster,
) -> tuple[Iterator[dict[str, Any]], Resources]:
    """Starts the plan over `items` (the shards with work left) on the cluster; -> the written units as they
    come, and the resources the stages got."""
    cluster.ensure()
    configure_ray_data(cfg)
    res = cfg.compute.pick(cluster.gpus())
    write = WriteSettings(
        store.url,
        store.options,
        run.fingerprint,
        run.sampler.to_dict(),
        fault_spec,
        precision=run.precision,
        outputs=cfg.outputs,
        qa=cfg.qa,
        **(extension.write if extension else {}),
    )
    ds = build_dataset(
        items,
        res,
        run.spec,
        ReadSettings(cfg.sampling.unit_rows, cfg.io.retry_errors, cfg.io.reach, cfg.source),
        DecodeSettings(run.sampler.resolution, run.run_seed, cfg.sampling.instruction, cfg.outputs),
        run.sampler,
        write,
        fault_spec,
        middle=extension.middle if extension else None,
        qa=cfg.qa_for_actors(),
        guard=UnitGuardSettings(
            store.url,
            store.options,
            cfg.quarantine.deaths_allowed,
            cfg.quarantine.deadline_s(cfg.sampling.unit_rows, run.sampler.num_inference_steps),
        ),
    )
    return iter(ds.iter_rows()), res
