"""The edit job: plan the Ray Data pipeline over the input shards and commit its units, exactly once.

    summary = run_edit(EditConfig(input="s3://b/in/shard-{000..009}.tar", output="s3://b/out/run1"))

Steps (docs/pipeline.md has the protocol and why each step is safe to crash in):
  1. resolve the input shards and the run identity (model fingerprint, sampler, prompt, seed, precision)
  2. take the output's lease (one driver per output), then write run.json, or refuse if the output holds a
     run with another identity
  3. read the commit records; refuse input shards rewritten since they were first planned; delete orphans
     and superseded commits left by a crashed run
  4. stream: read -> decode -> express (actors) -> edit (actors) -> write; nothing is materialised
  5. the driver alone writes commits/<unit>.json for each written unit, after its files exist
  6. write summary.json (read = ok + error + skipped)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import faults, terminal
from .config import (EditConfig, Resources, SamplerSettings, StageResources, fingerprint_of, pick_resources,
                     resolve_precision, resolve_sampler, run_identity)
from .editors import ModelSpec
from .lease import Lease
from .ledger import OutputState, commit_record, ensure_run_record, find_orphans, load_state, now, sweep
from .shard_identity import check_and_record, current_identities
from .clip_qa import check_clip
from .model_stages import EditStage, ExpressEditStage, ExpressStage
from .quality import QASettings
from .stages import DecodeSettings, ReadSettings, WriteSettings, decode_unit, read_shard, shard_done, write_unit
from .inputs import input_patterns, resolve_sources
from .preflight import check_s3
from .sources import check_manifests
from .storage import Store, check_output_outside_inputs

log = logging.getLogger("mgie_batch.edit")


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def ensure_ray(num_cpus: int | None = None) -> None:
    """Attach to RAY_ADDRESS / a running `ray start` cluster, or start a local instance (docs/deploy.md)."""
    import ray

    if ray.is_initialized():
        terminal.status("using the Ray instance this process already runs")
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance; no token to manage
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    terminal.status(f"attaching to Ray at {address}" if address else
                    f"starting Ray (local, {num_cpus or os.cpu_count()} CPUs)")
    # workers' own output stays in the session's log files unless --verbose asked for it here
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=terminal.verbose(), configure_logging=False)
    if not terminal.verbose():
        node = getattr(ray._private.worker.global_worker, "node", None)  # None when attached to a cluster
        if node is not None:
            terminal.status(f"Ray worker logs: {node.get_logs_dir_path()}")


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


@dataclass
class RunExtension:
    """What another job on this plan (eval, make-dataset, edit --expressive summarize) changes.

    `identity` joins the run identity (a changed summarizer or metric model is another run); `middle`
    replaces the stages between decode and write (default: `express_and_edit`) and gets (ds, resources,
    sampler settings, fault spec, QA settings); `write` sets extra WriteSettings fields; `finish` runs after the last
    commit with (store, summary) and may return extra summary entries.
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
    return ds.map(stage_cls, fn_constructor_kwargs={**kwargs, "batch_size": stage.batch_size},
                  compute=ray.data.ActorPoolStrategy(**pool), num_gpus=stage.num_gpus,
                  num_cpus=stage.num_cpus, memory=stage.memory_gb * 2**30)


def express_and_edit(ds, res: Resources, model, sample: SamplerSettings, fault_spec: str,
                     qa: QASettings | None = None):
    """The edit plan's model stages: expressive instruction + conditioning, then diffusion and its auto-QA;
    in two actor pools (`split` layout) or in one actor per GPU holding both parts (`fused`)."""
    common = {"model": model, "torch_threads": res.torch_threads, "fault_spec": fault_spec}
    if res.layout == "fused":
        return actor_map(ds, ExpressEditStage, res.fused(), express_batch_size=res.express.batch_size,
                         sample=sample, qa=qa, **common)
    ds = actor_map(ds, ExpressStage, res.express, **common)
    return actor_map(ds, EditStage, res.edit, sample=sample, qa=qa, **common)


def build_dataset(items: list[dict[str, Any]], res: Resources, model: ModelSpec, read: ReadSettings,
                  decode: DecodeSettings, sample: SamplerSettings, write: WriteSettings, fault_spec: str,
                  middle: Callable[..., Any] | None = None, qa: QASettings | None = None):
    """The lazy Ray Data plan, one unit per row (see pipeline.rows)."""
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
    ds = ds.map(decode_unit, fn_kwargs={"settings": decode}, num_cpus=res.read_cpus)
    if middle is not None:
        ds = middle(ds, res, sample, fault_spec, qa)
    else:
        ds = express_and_edit(ds, res, model, sample, fault_spec, qa)
    return ds.map(write_unit, fn_kwargs={"settings": write}, num_cpus=res.write_cpus)


class Committer:
    """The only writer of commit records. Dedupes: a unit base is committed at most once per attempt."""

    def __init__(self, store: Store, state: OutputState, fingerprint: str, lease: Lease | None = None):
        self.store, self.state, self.fingerprint, self.lease = store, state, fingerprint, lease
        self.written = 0
        self.duplicates = 0

    def commit(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        base, attempt = meta["unit"], int(meta["attempt"])
        current = self.state.commits.get(base)
        if current is not None and current["attempt"] >= attempt:
            # delivered twice (a retried task whose first result also arrived): the files have the same
            # deterministic names and content, so there is nothing to undo; never commit twice
            self.duplicates += 1
            log.warning("unit %s (attempt %d) is already committed; ignoring the duplicate", base, attempt)
            return None
        faults.maybe_kill("kill_before_commit", self.written + 1)
        if self.lease is not None:
            self.lease.ensure_held()  # a driver whose lease was taken over commits nothing more
        rec = commit_record(meta, self.fingerprint)
        self.store.write_atomic(f"commits/{rec['unit']}.json", json.dumps(rec, sort_keys=True).encode())
        self.written += 1
        faults.maybe_kill("kill_after_commit", self.written)
        self.state.commits[base] = rec
        old = rec["replaces"]
        if old and old != rec["unit"]:
            # the new attempt is visible; the old one is now stale. Record first, then its files: a crash in
            # between leaves plain orphans, which the next run removes.
            self.store.delete(f"commits/{old}.json")
            self.store.delete(f"shards/{old}.tar")
            self.store.delete(f"ledger/{old}.parquet")
        return rec


def plan_rows(sources: list[str], endpoint_url: str | None) -> int | None:
    """Input rows of the whole run when every source tells them cheaply (pipeline.sources.count_rows)."""
    from .sources import count_rows

    total = 0
    for url in sources:
        n = count_rows(url, endpoint_url)
        if n is None:
            return None
        total += n
    return total


def _kinds(sources: list[str]) -> str:
    from collections import Counter

    from .sources import source_kind

    counts = Counter(source_kind(u) for u in sources)
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def run_edit(cfg: EditConfig, extension: RunExtension | None = None) -> dict[str, Any]:
    started, t0 = now(), time.monotonic()
    fault_spec = faults.from_env()
    faults.configure(fault_spec)
    store = Store.open(cfg.output, cfg.endpoint_url)

    # 1. inputs and identity
    patterns = input_patterns(cfg.input, cfg.endpoint_url)
    terminal.status(f"reading the input list: {' '.join(patterns)[:200]}")
    # one line per unusable S3 location (no credentials, wrong endpoint, no bucket, denied) within seconds
    check_s3([store.url, *patterns, cfg.model.source, *([cfg.qa_clip] if cfg.qa_clip else [])], cfg.endpoint_url)
    shards = resolve_sources(patterns, cfg.endpoint_url)  # tar shards, manifests, folders of images
    check_output_outside_inputs(patterns, shards, store.url)  # before anything is written
    check_manifests(shards, cfg.endpoint_url, cfg.source, need_instruction=cfg.instruction is None)
    terminal.status(f"loading model {cfg.model.source}")
    model = cfg.model.describe()
    qa_clip = check_clip(cfg.qa_clip, cfg.qa().storage_options) if cfg.qa_clip else None  # loads, before any work
    sampler, run_seed = resolve_sampler(cfg, model["config"])
    precision = resolve_precision(cfg.model, model["kind"], cfg.resources, _gpus_if_needed)
    spec = cfg.model if precision is None else dataclasses.replace(cfg.model, **precision)  # actors use these
    identity = run_identity(cfg, model, sampler, run_seed, precision, qa_clip)
    if extension is not None:
        identity = {**identity, **extension.identity}
    fingerprint = fingerprint_of(identity)

    # 2. one driver per output: the lease before anything is written (a second driver leaves no trace)
    plan = RunPlan(cfg, extension, store, shards, spec, model, sampler, run_seed, precision, identity, fingerprint,
                   fault_spec, started, t0)
    lease = Lease(store, cfg.lease_timeout_s)
    lease.acquire()
    try:
        lease.start_heartbeat()
        return _run_holding_lease(plan, lease)
    finally:
        lease.release()


@dataclass(frozen=True)
class RunPlan:
    """What step 1 resolved before anything is written: the inputs and the identity of the run."""

    cfg: EditConfig
    extension: RunExtension | None
    store: Store
    shards: list[str]
    spec: ModelSpec  # cfg.model with the resolved device and dtype: what the actors load
    model: dict[str, Any]  # ModelSpec.describe()
    sampler: SamplerSettings
    run_seed: int
    precision: dict[str, str] | None
    identity: dict[str, Any]
    fingerprint: str
    fault_spec: str
    started: str
    t0: float


def _gpus_if_needed() -> float:
    ensure_ray()
    return cluster_gpus()


def _run_holding_lease(plan: RunPlan, lease: Lease) -> dict[str, Any]:
    cfg, extension, store, shards, model, sampler = (plan.cfg, plan.extension, plan.store, plan.shards, plan.model,
                                                     plan.sampler)
    run_seed, precision, identity, fingerprint = plan.run_seed, plan.precision, plan.identity, plan.fingerprint
    fault_spec, started, t0 = plan.fault_spec, plan.started, plan.t0
    # run record (refuses a different configuration)
    ensure_run_record(store, identity, fingerprint, {
        "output": store.url, "model_source": cfg.model.source,
        "code": {"git_commit": _git_commit()},
    })

    # 3. what is committed; each input shard still the bytes it was (refused otherwise); remove what a
    #    crashed run left behind
    state = load_state(store)
    identities = current_identities(shards, cfg.endpoint_url)
    check_and_record(store, identities, state.committed_for_shard(), cfg.endpoint_url)
    removed = sweep(store, state)
    if removed:
        log.info("removed %d orphan files / stale commit records", removed)
    committed = state.committed_for_shard()
    counts = {"ok": 0, "error": 0, "skipped": 0, "units_committed": 0, "units_skipped": 0}
    total_rows = plan_rows(shards, cfg.endpoint_url)
    done_rows = sum(u["n_rows"] for units in committed.values() for u in units.values())
    terminal.status(f"planning {len(shards)} {'source' if len(shards) == 1 else 'sources'} ({_kinds(shards)}) / "
                    f"{'rows known once read' if total_rows is None else f'{total_rows} rows'}, "
                    f"{done_rows} rows already done")
    progress = terminal.progress(len(shards), total_rows, enabled=cfg.progress)
    items = []
    for shard in shards:
        units = committed.get(shard, {})
        if shard_done(units, cfg.retry_errors):
            # nothing to do in this shard: count it here instead of sending it through the cluster
            for index, u in sorted(units.items()):
                counts["skipped"] += u["n_rows"]
                counts["units_skipped"] += 1
                progress.update(shard, index, u["last"], u["n_rows"], 0, 0, u["n_rows"])
        else:
            items.append({"shard": shard, "size": identities[shard].size, "committed": json.dumps(units)})

    # 4. the streaming plan (not even started when every shard is done)
    res_name, layout = cfg.resources, None
    metas: Any = iter(())
    if items:
        ensure_ray()
        import ray.data

        ctx = ray.data.DataContext.get_current()
        # a stage's own exception type reaches the driver (a refusing store's PermissionError stays one)
        ctx.raise_original_map_exception = True
        if cfg.limit is not None:
            # a trial run takes the inputs in the order given: units reach the committer in input order
            # (a slow first source holds the others back, which a short trial run can afford)
            ctx.execution_options.preserve_order = True
        if cfg.progress or not terminal.verbose():
            # our own bar below; Ray's bars would fight it for the terminal (or fill the log file with redraws)
            ctx.enable_progress_bars = False
        res = pick_resources(cfg.resources, cluster_gpus()).with_overrides(
            cfg.layout, cfg.batch_size, cfg.express_batch_size, cfg.concurrency, cfg.num_gpus)
        res_name, layout = res.name, res.layout
        metas = build_dataset(
            items, res, plan.spec,
            ReadSettings(cfg.unit_rows, cfg.retry_errors, cfg.endpoint_url, cfg.source),
            DecodeSettings(sampler.resolution, run_seed, cfg.instruction, cfg.resize, cfg.max_pixels),
            sampler,
            WriteSettings(store.url, store.options, fingerprint, sampler.to_dict(), fault_spec,
                          precision=precision, **{"copy_input": cfg.copy_input, "outputs": cfg.outputs(),
                                                  **(extension.write if extension else {})}),
            fault_spec, middle=extension.middle if extension else None, qa=cfg.qa(),
        ).iter_rows()
    metas = iter(metas)

    # 5. commit as units arrive
    committer = Committer(store, state, fingerprint, lease)
    errors_by_kind: dict[str, int] = {}
    stage_ms = {"decode": 0.0, "express": 0.0, "edit": 0.0, "encode": 0.0}
    limited = False
    for meta in metas:
        if meta["skip"]:
            counts["skipped"] += int(meta["n_rows"])
            counts["units_skipped"] += 1
            progress.update(meta["shard"], meta["index"], meta["last"], meta["n_rows"], 0, 0, int(meta["n_rows"]))
            continue
        rec = committer.commit(meta)
        if rec is None:
            continue
        counts["ok"] += rec["new"]["ok"]
        counts["error"] += rec["new"]["error"]
        counts["skipped"] += rec["new"]["kept"]
        counts["units_committed"] += 1
        for k, v in rec["error_kinds"].items():
            errors_by_kind[k] = errors_by_kind.get(k, 0) + v
        for k, v in rec["ms"].items():
            stage_ms[k] += v
        progress.update(meta["shard"], meta["index"], meta["last"], meta["n_rows"], rec["new"]["ok"],
                        rec["new"]["error"], rec["new"]["kept"])
        if cfg.limit is not None and counts["ok"] + counts["error"] >= cfg.limit:
            limited = True
            break
    if limited and hasattr(metas, "close"):
        metas.close()  # stops the streaming executor now; units it had in flight stay uncommitted orphans
    progress.close()

    # 6. with every unit committed, files no commit names are debris (temporaries of writes that died); after
    #    --limit they may also be units still in flight, left for the next run's step 3. Then the summary.
    if not limited:
        state.orphans = find_orphans(store, state)
        sweep(store, state)
    elapsed = time.monotonic() - t0
    processed = counts["ok"] + counts["error"]
    summary = {
        "run_fingerprint": fingerprint, "input": cfg.input, "output": store.url, "shards": len(shards),
        "started_at": started, "finished_at": now(), "seconds": round(elapsed, 3),
        "read": processed + counts["skipped"], **counts,
        "complete": not limited, "limit": cfg.limit, "retry_errors": cfg.retry_errors,
        "rows_per_second": round(processed / elapsed, 4) if elapsed > 0 else None,
        "errors_by_kind": dict(sorted(errors_by_kind.items())),
        "mean_ms": {k: round(v / processed, 3) if processed else None for k, v in stage_ms.items()},
        "orphans_removed_at_start": removed, "duplicates_ignored": committer.duplicates,
        "resources": res_name, "layout": layout, "model": {"source": cfg.model.source, "fingerprint": model["fingerprint"]},
        "sampler": sampler.to_dict(), "run_seed": run_seed,
        "ledger_totals": state.totals(),  # the committer keeps state.commits current
        "precision": precision,
        # shards cut short (a partial upload?): their readable rows are in, the rest waits for the whole file
        "incomplete_shards": sorted(url for url, units in state.committed_for_shard().items()
                                    if any(u.get("unreadable_tail") for u in units.values())),
    }
    if extension is not None and extension.finish is not None:
        summary.update(extension.finish(store, summary) or {})
    store.write_atomic("summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary
