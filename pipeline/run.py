"""The edit job: plan the Ray Data pipeline over the input shards and commit its units, exactly once.

    summary = run_edit(EditConfig.of(input="s3://b/in/shard-{000..009}.tar", output="s3://b/out/run1"))

`run_edit` reads top to bottom as the protocol's steps (docs/pipeline.md has why each is safe to crash in);
the parts live where their one job is: the input checks in `inputs`, the identity in `identity`, the lease
in `lease`, the Ray Data plan in `plan`, the committer and the sweeps in `commit`.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from pipeline import faults, terminal
from pipeline.cluster import RunCluster
from pipeline.commit import CommitTally, Committer, commit_units, pending_shards, sweep_debris, sweep_left_behind
from pipeline.config import EditConfig, Resources
from pipeline.identity import RunIdentity, resolve_identity
from pipeline.inputs import checked_sources
from pipeline.layout import OutputLayout
from pipeline.lease import Lease
from pipeline.ledger import OutputState, ensure_run_record, load_state, now
from pipeline.location import Reach
from pipeline.plan import RunExtension, stream_units
from pipeline.refusals import InputGone, checking
from pipeline.shard_identity import check_and_record, current_identities
from pipeline.storage import Store


def run_edit(cfg: EditConfig, extension: RunExtension | None = None) -> dict[str, Any]:
    """Runs (or resumes) the edit job `cfg` describes; -> the summary, also written to the output."""
    started, t0 = now(), time.monotonic()
    fault_spec = faults.from_env()
    faults.configure(fault_spec)
    cluster = RunCluster()  # reached once, by whichever of steps 2 and 7 needs it first (neither may)
    startup: dict[str, float] = {}  # seconds from the start to the end of each start-up step, for the summary
    mark = lambda step: startup.setdefault(step, round(time.monotonic() - t0, 3))  # noqa: E731

    # steps 1 and 2 are the checks: a ValueError or FileNotFoundError raised in them refuses the settings or
    # inputs (pipeline.refusals); raised anywhere later, it is a bug
    with checking():
        # 1. check settings and inputs: every refusal comes before anything is written
        store = Store.open(cfg.io.output_location)
        shards = checked_sources(cfg, store)
        mark("checks")

        # 2. identity: model, sampler and precision decide the outputs; their hash is the run fingerprint
        terminal.status(f"loading model {cfg.model.source}")
        run = resolve_identity(cfg, extension, cluster.gpus)
        licence = cfg.model.licence()
        if licence is not None and not licence.get("commercial_use", True):
            # said once, before any work: the official MGIE weights may not be used for a commercial catalogue
            terminal.status(
                f"note: the weights of {cfg.model.source} are licensed {licence['name']}: "
                f"non-commercial use only ({licence.get('url', 'see the licence')})"
            )
        mark("identity")

    # 3. one driver per output: the lease before anything is written (a second driver leaves no trace)
    with Lease(store, cfg.run.lease_timeout_s).held() as lease:
        # 4. the run record: written by the first run, refused when the output holds another identity
        ensure_run_record(
            store,
            run.identity,
            run.fingerprint,
            {
                "output": store.url,
                "model_source": cfg.model.source,
                "output_format": cfg.outputs.output_format,
                "code": {"git_commit": _git_commit()},
                "licence": licence,
            },
        )

        # 5. what is committed; each input shard still the bytes it was (refused otherwise); then remove what
        #    a crashed run left behind
        state = load_state(store)
        with checking():  # an input deleted since step 1
            identities = current_identities(shards, cfg.io.reach)
        check_and_record(store, identities, state.committed_for_shard(), cfg.io.reach)
        tally = CommitTally(orphans_removed=sweep_left_behind(store, state))

        # 6. finished shards are counted here; the others are the plan's items
        progress = _announce(cfg, shards, state)
        items = pending_shards(shards, identities, state, cfg.io.retry_errors, tally, progress)
        mark("output_state")  # lease, run record, commits read, input identities, sweep

        # 7. stream read -> decode -> model stages -> write (not even started when every shard is done)
        units, res = stream_units(cfg, items, run, store, fault_spec, extension, cluster) if items else (iter(()), None)
        mark("plan")  # Ray reached, the dataset planned and started

        # 8. commit as units arrive: the driver alone writes commit records, after the unit's files exist
        try:
            complete = commit_units(
                units, Committer(store, state, run.fingerprint, lease), tally, progress, cfg.io.limit
            )
        except FileNotFoundError as e:
            _refuse_if_gone([item["shard"] for item in items], cfg.io.reach, e)
            raise
        progress.close()

        # 9. with every unit committed, files no commit names are debris (after --limit: left for step 5)
        if complete:
            sweep_debris(store, state)

        # 10. the summary (read = ok + error + skipped)
        if tally.first_commit_at is not None:
            startup["first_commit"] = round(tally.first_commit_at - t0, 3)
        summary = _summary(cfg, run, store, shards, state, tally, res, complete, started, t0)
        summary["startup_s"] = startup
        if extension is not None and extension.finish is not None:
            summary.update(extension.finish(store, summary) or {})
        store.write_atomic(OutputLayout.SUMMARY, json.dumps(summary, indent=2, sort_keys=True).encode())
        return summary


def _refuse_if_gone(shards: list[str], reach: Reach, error: Exception) -> None:
    """A read task that finds its shard gone stops the plan with a FileNotFoundError: that is an input
    deleted under the run (InputGone, exit 2, the committed units stay), told by asking the store, not by
    the message; any other FileNotFoundError stays what it is."""
    for url in shards:
        fs, path = reach.at(url).fs()
        fs.invalidate_cache()
        if not fs.exists(path):
            raise InputGone(
                f"input shard {url} was there when the run was planned but is not found now; restore "
                f"it or leave it out of --input, then run the same command again"
            ) from error


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def plan_rows(sources: list[str], reach: Reach) -> int | None:
    """Input rows of the whole run when every source tells them cheaply (pipeline.sources.count_rows)."""
    from pipeline.sources import count_rows

    total = 0
    for url in sources:
        n = count_rows(reach.at(url))
        if n is None:
            return None
        total += n
    return total


def _kinds(sources: list[str]) -> str:
    from collections import Counter

    from pipeline.sources import source_kind

    counts = Counter(source_kind(u) for u in sources)
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _announce(cfg: EditConfig, shards: list[str], state: OutputState):
    """The status line of what the run plans, and the progress bar it then updates."""
    total_rows = plan_rows(shards, cfg.io.reach)
    done_rows = sum(u["n_rows"] for units in state.committed_for_shard().values() for u in units.values())
    terminal.status(
        f"planning {len(shards)} {'source' if len(shards) == 1 else 'sources'} ({_kinds(shards)}) / "
        f"{'rows known once read' if total_rows is None else f'{total_rows} rows'}, "
        f"{done_rows} rows already done"
    )
    return terminal.progress(len(shards), total_rows, enabled=cfg.run.progress)


def _summary(
    cfg: EditConfig,
    run: RunIdentity,
    store: Store,
    shards: list[str],
    state: OutputState,
    tally: CommitTally,
    res: Resources | None,
    complete: bool,
    started: str,
    t0: float,
) -> dict[str, Any]:
    elapsed = time.monotonic() - t0
    processed = tally.processed
    return {
        "run_fingerprint": run.fingerprint,
        "input": cfg.io.input,
        "output": store.url,
        "shards": len(shards),
        "started_at": started,
        "finished_at": now(),
        "seconds": round(elapsed, 3),
        "read": processed + tally.skipped,
        **tally.counts(),
        "complete": complete,
        "limit": cfg.io.limit,
        "retry_errors": cfg.io.retry_errors,
        "rows_per_second": round(processed / elapsed, 4) if elapsed > 0 else None,
        "errors_by_kind": dict(sorted(tally.errors_by_kind.items())),
        "mean_ms": {k: round(v / processed, 3) if processed else None for k, v in tally.stage_ms.items()},
        "orphans_removed_at_start": tally.orphans_removed,
        "duplicates_ignored": tally.duplicates,
        "resources": res.name if res else cfg.compute.resources,
        "layout": res.layout if res else None,
        "model": {"source": cfg.model.source, "fingerprint": run.model["fingerprint"]},
        "sampler": run.sampler.to_dict(),
        "run_seed": run.run_seed,
        "ledger_totals": state.totals(),  # the committer keeps state.commits current
        "precision": run.precision,
        # shards cut short (a partial upload?): their readable rows are in, the rest waits for the whole file
        "incomplete_shards": sorted(
            url
            for url, units in state.committed_for_shard().items()
            if any(u.get("unreadable_tail") for u in units.values())
        ),
    }
