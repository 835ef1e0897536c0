"""What an output prefix holds: counts per status, per error kind and per source shard; throughput.

Reads only the run record, the last summary and the commit records (each carries its unit's counts, the
status counts of pipeline/fields.py, whichever --output-format wrote the unit's files), so it is cheap
on a run of millions of rows and safe to call while the run is going: uncommitted work is not counted, and
orphans are reported, not removed. `qa_failed_rows` (`status --qa-failed`) reads the committed ledger.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from typing import Any

from pipeline.layout import OutputLayout
from pipeline.ledger import load_state
from pipeline.location import Location
from pipeline.stages import shard_complete
from pipeline.storage import Store
from pipeline.unit_record import extra_count_names


def _parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text)


def output_status(output: str | Location, storage_options: dict | None = None) -> dict[str, Any]:
    store = Store.open(output, storage_options)
    layout = OutputLayout(store.url)
    if not store.exists(layout.RUN_RECORD):
        raise FileNotFoundError(
            f"{output}: no {layout.RUN_RECORD}; not the output prefix of an edit run (or "
            f"nothing has been written there yet)"
        )
    run = json.loads(store.read_bytes(layout.RUN_RECORD))
    summary = json.loads(store.read_bytes(layout.SUMMARY)) if store.exists(layout.SUMMARY) else None
    state = load_state(store)

    per_shard: dict[str, dict[str, Any]] = {}
    kinds: Counter[str] = Counter()
    counted = {name: 0 for name in extra_count_names()}  # e.g. qa_failed
    times = []
    for rec in state.commits.values():
        shard = per_shard.setdefault(rec["source_shard"], {"rows": 0, "ok": 0, "error": 0, "units": 0})
        shard["rows"] += rec["n_rows"]
        shard["ok"] += rec["counts"]["ok"]
        shard["error"] += rec["counts"]["error"]
        shard["units"] += 1
        kinds.update(rec["error_kinds"])
        for name in counted:
            counted[name] += rec.get(name, 0)
        times.append((_parse_time(rec["committed_at"]), rec["counts"]["ok"] + rec["counts"]["error"]))
    for url, units in state.committed_for_shard().items():
        per_shard[url]["complete"] = shard_complete(units)

    totals = state.totals()
    throughput = None
    if len(times) >= 2:
        times.sort()
        span = (times[-1][0] - times[0][0]).total_seconds()
        rows_after_first = sum(n for _, n in times[1:])
        # short spans (units committed in one burst) say nothing about the steady rate
        throughput = round(rows_after_first / span, 4) if span >= 10 else None
    return {
        "output": store.url,
        "run_fingerprint": run.get("run_fingerprint"),
        "model": run.get("identity", {}).get("model"),
        "sampler": run.get("identity", {}).get("sampler"),
        "rows": totals["rows"],
        "status": {"ok": totals["ok"], "error": totals["error"]},
        "units": totals["units"],
        "errors_by_kind": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        **counted,
        "output_format": run.get("output_format") or "webdataset",
        "shards": dict(sorted(per_shard.items())),
        "shards_complete": sum(1 for s in per_shard.values() if s["complete"]),
        "orphan_files": len(state.orphans) + len(state.stale_commits),
        "commit_throughput_rows_per_s": throughput,
        "last_run": summary,
    }


def format_status(st: dict[str, Any], max_shards: int = 20) -> str:
    lines = [
        f"output       {st['output']}",
        f"run          {str(st['run_fingerprint'])[:16]}  model {st['model']['name'] if st['model'] else '?'}  "
        f"output format {st.get('output_format', 'webdataset')}",
        f"rows         {st['rows']} in the ledger: ok {st['status']['ok']}, error {st['status']['error']} "
        f"({st['units']} units)",
    ]
    if st.get("qa_failed"):
        lines.append(
            f"auto-QA      {st['qa_failed']} ok rows outside the --qa-min-*/--qa-max-* bounds (ledger "
            f"column qa_pass; `--qa-failed --json` lists them)"
        )
    if st["errors_by_kind"]:
        lines.append("errors by kind")
        lines += [f"  {v:>8}  {k}" for k, v in st["errors_by_kind"].items()]
    shards = st["shards"]
    lines.append(f"shards       {len(shards)} seen, {st['shards_complete']} complete")
    for name, s in list(shards.items())[:max_shards]:
        flag = "complete" if s["complete"] else "partial"
        lines.append(f"  {s['rows']:>8} rows  ok {s['ok']:>8}  error {s['error']:>6}  {flag:<8}  {name}")
    if len(shards) > max_shards:
        lines.append(f"  ... {len(shards) - max_shards} more shards (--json lists all)")
    last = st["last_run"]
    if last:
        lines.append(
            f"last run     {last['finished_at']}: read {last['read']} = ok {last['ok']} + error "
            f"{last['error']} + skipped {last['skipped']}; {last['rows_per_second'] or 0:.2f} rows/s over "
            f"{last['seconds']:.1f} s" + ("" if last["complete"] else " (stopped at --limit)")
        )
    else:
        lines.append(
            "last run     no summary: a run is going, or the last one was interrupted; rerun the "
            "same edit command to finish"
        )
    if st["commit_throughput_rows_per_s"] is not None:
        lines.append(f"throughput   {st['commit_throughput_rows_per_s']:.2f} rows/s between the first and last commit")
    if st["orphan_files"]:
        lines.append(f"orphans      {st['orphan_files']} uncommitted files (ignored; the next run removes them)")
    return "\n".join(lines)


QA_FAILED_FIELDS = (
    "key",
    "source_shard",
    "row_index",
    "output_shard",
    "output_member",
    "qa_change",
    "qa_ssim",
    "qa_clip_t",
    "qa_clip_dir",
)


def qa_failed_rows(output: str | Location, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """The committed rows whose auto-QA failed (qa_pass false; null means no bound was set, not a failure),
    in ledger order: where each is (source shard and row, output shard and member) and its QA figures."""
    import pyarrow.compute as pc

    from pipeline.ledger import read_ledger

    table = read_ledger(output, storage_options)
    if "qa_pass" not in table.column_names:  # a ledger from before auto-QA
        return []
    failed = table.filter(pc.fill_null(pc.equal(table["qa_pass"], False), False))
    return failed.select([f for f in QA_FAILED_FIELDS if f in table.column_names]).to_pylist()


def format_qa_failed(rows: list[dict[str, Any]]) -> str:
    """One line a row: key, figures, member and shard (the text form of `status --qa-failed`)."""

    def figure(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{len(rows)} ok rows failed auto-QA" + (":" if rows else "")]
    lines += [
        f"  {r['key']}  change {figure(r.get('qa_change'))}  ssim {figure(r.get('qa_ssim'))}  clip_t "
        f"{figure(r.get('qa_clip_t'))}  clip_dir {figure(r.get('qa_clip_dir'))}  "
        f"{r.get('output_shard')}:{r.get('output_member') or '?'}  (row {r.get('row_index')} of "
        f"{r.get('source_shard')})"
        for r in rows
    ]
    return "\n".join(lines)
