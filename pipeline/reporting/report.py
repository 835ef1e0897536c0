"""A self-contained HTML contact sheet of one run: per row the input, the edit (and the goal when the
input had one), instruction, expressive instruction, status or error, auto-QA figures, and metrics.

    html = build_report("s3://bucket/edits/run1", ReportConfig(errors_only=False, max_rows=2000))

Everything is in the one file: thumbnails are embedded as data URIs, the rows are a JSON block that a
small script pages through (50 rows a page by default), with filters for errors / ok / QA failed, a text
search and a worst-QA-first sort (the page itself: pipeline.reporting.page). Only committed units are shown
(a unit without its commit record is an orphan of a crashed run). Large runs are capped at `max_rows`
embedded rows, error rows first (then QA failures when sorting worst first), and the page says how many
were left out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import fsspec
from PIL import Image

from pipeline.fields import METRIC_PREFIX, report_fields, timing_columns
from pipeline.layout import OutputLayout
from pipeline.location import FROM_ENVIRONMENT, Reach
from pipeline.reporting.page import render
from pipeline.shards import ShardReadError, iter_samples

SORTS = ("ledger", "worst")  # ledger order; worst auto-QA first (`worst_first`)


@dataclass
class ReportConfig:
    errors_only: bool = False
    max_rows: int = 1000  # rows embedded in the page; error rows are kept first
    page_size: int = 50
    thumb_size: int = 160  # longest side of a thumbnail, px
    thumb_quality: int = 80  # JPEG quality of thumbnails
    title: str | None = None
    sort: str = "ledger"  # the page's initial order: ledger | worst (auto-QA failures first); a control changes it

    def __post_init__(self):
        if self.sort not in SORTS:
            raise ValueError(f"--sort must be one of {', '.join(SORTS)}, got {self.sort!r}")


@dataclass
class RunData:
    output: str
    run: dict[str, Any]
    summary: dict[str, Any]
    table: Any  # pyarrow.Table of the committed ledger rows, sorted by source shard and row index
    orphans: list[str]  # units with files but no winning commit (a crash, a superseded attempt)

    @property
    def total_rows(self) -> int:
        return self.table.num_rows

    def count_ok(self) -> int:
        import pyarrow.compute as pc

        if self.table.num_rows == 0 or "status" not in self.table.column_names:
            return 0
        return int(pc.sum(pc.equal(self.table["status"], "ok")).as_py() or 0)


# ---------------------------------------------------------------------------------------------- reading


def _options(url: str, storage_options: dict | None, reach: Reach) -> dict:
    """Explicit storage options apply to every URL; without them, each URL is reached as `reach` says."""
    return storage_options if storage_options is not None else reach.options(url)


def _fs(url: str, storage_options: dict | None, reach: Reach = FROM_ENVIRONMENT):
    fs, root = fsspec.core.url_to_fs(url, **_options(url, storage_options, reach))
    return fs, root.rstrip("/")


def _json_or_empty(fs, path: str) -> dict[str, Any]:
    return json.loads(fs.cat_file(path)) if fs.exists(path) else {}


def load_run(output: str, storage_options: dict | None = None, reach: Reach = FROM_ENVIRONMENT) -> RunData:
    """Reads the run record, the summary and the committed ledger under `output`: the winning commit of each
    unit (a superseded attempt left by a crash is not shown twice), as `read_ledger` gives it, whichever
    --output-format wrote it.

    The rows stay an Arrow table: counts and metric means are computed on columns, and only the rows that
    go into the page become Python objects (a run may have millions of rows).
    """
    from pipeline.ledger import load_state, read_ledger
    from pipeline.storage import Store

    fs, root = _fs(output, storage_options, reach)
    layout = OutputLayout(root)
    if not fs.exists(layout.url(layout.COMMITS)):
        raise FileNotFoundError(f"{output}: no ledger (no commit records); is this the output prefix of a run?")
    table = read_ledger(reach.at(output), storage_options)
    state = load_state(Store.open(reach.at(output), storage_options))
    orphans = sorted({unit for unit in map(layout.unit_of, state.orphans) if unit})
    return RunData(
        output,
        _json_or_empty(fs, layout.url(layout.RUN_RECORD)),
        _json_or_empty(fs, layout.url(layout.SUMMARY)),
        table,
        orphans,
    )


def _tar_images(fs, path: str, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """{key: {"image": bytes, "goal": bytes}} for the wanted keys of one input tar (one streaming pass),
    each the field the decode stage would pick: the first of IMAGE_EXTS the sample has."""
    from pipeline.stages import IMAGE_EXTS

    found: dict[str, dict[str, bytes]] = {}
    with fs.open(path, "rb") as f:
        try:
            for key, fields in iter_samples(f):
                if key not in keys or key in found:
                    continue
                parts = {}
                image = next((e for e in IMAGE_EXTS if e in fields), None)
                if image is not None:
                    parts["image"] = fields[image]
                goal = next((f"goal.{e}" for e in IMAGE_EXTS if f"goal.{e}" in fields), None)
                if goal is not None:
                    parts["goal"] = fields[goal]
                found[key] = parts
        except ShardReadError:
            pass  # a truncated shard: the samples before the break still get their thumbnails
    return found


def thumbnail(data: bytes, size: int, quality: int) -> str | None:
    """A JPEG data URI no larger than size x size, or None when the bytes are not an image. Decoded as
    the pipeline decodes its inputs (EXIF orientation, transparency over white, 16-bit scaled)."""
    from pipeline.viewing import as_viewed_rgb

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = as_viewed_rgb(img)
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=quality)
    except Exception:  # a broken image is shown as missing, never a failed report
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _resolve(root: str, path: str) -> str:
    """Ledger paths: output shards are relative to OUTPUT, source shards are URLs or absolute paths."""
    return path if "://" in path or path.startswith("/") else f"{root}/{path}"


Thumbs = dict[tuple[str, str, str], dict[str, str]]  # (kind, shard, key) -> {"image"/"goal": data URI}


def collect_thumbnails(
    run: RunData,
    rows: list[dict[str, Any]],
    cfg: ReportConfig,
    storage_options: dict | None = None,
    reach: Reach = FROM_ENVIRONMENT,
    unreachable: list[str] | None = None,
) -> Thumbs:
    """Thumbnails per (source or output shard, key), reading each shard once. Keyed by shard as well as
    key: the same key in two input shards is two rows with two pictures. A shard that cannot be read (an
    endpoint that is gone, no credentials for it) leaves its pictures missing, and `unreachable` gets one
    line saying which and why."""
    fs, root = _fs(run.output, storage_options, reach)
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)  # (kind, shard path) -> keys
    for row in rows:
        key = str(row.get("key"))
        if row.get("source_shard"):
            wanted[("source", str(row["source_shard"]))].add(key)
        if row.get("output_shard"):
            wanted[("output", str(row["output_shard"]))].add(key)
    thumbs: Thumbs = {}
    for (kind, shard), keys in sorted(wanted.items()):
        url = _resolve(root, shard) if kind == "output" else shard
        try:
            if "://" in url:
                sfs, spath = fsspec.core.url_to_fs(url, **_options(url, storage_options, reach))
            else:
                sfs, spath = (fs, url) if kind == "output" else fsspec.core.url_to_fs(url)
            if kind == "output":  # a tar or a Parquet file, as the run's --output-format wrote it
                from pipeline.writers import writer_of_path

                edits = writer_of_path(shard).read_images(sfs, spath, keys)
                images = {k: {"image": data} for k, data in edits.items()}
            else:
                images = _tar_images(sfs, spath, keys)
        except Exception as e:  # noqa: BLE001 - any store's error (botocore's are not OSErrors): the rows still show
            if unreachable is not None:
                unreachable.append(
                    f"{kind} shard {shard}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                )
            continue
        for key, parts in images.items():
            thumbs[(kind, shard, key)] = {
                name: thumbnail(data, cfg.thumb_size, cfg.thumb_quality) for name, data in parts.items()
            }
    return thumbs


def row_thumbnails(row: dict[str, Any], thumbs: Thumbs) -> dict[str, str | None]:
    """A row's input and goal from its source shard, its edit from its output shard."""
    key = str(row.get("key"))
    source = thumbs.get(("source", str(row.get("source_shard")), key), {})
    output = thumbs.get(("output", str(row.get("output_shard")), key), {})
    return {"input": source.get("image"), "goal": source.get("goal"), "edit": output.get("image")}


# ---------------------------------------------------------------------------------------------- selection


def select_rows(run: RunData, cfg: ReportConfig) -> list[dict[str, Any]]:
    """The rows embedded in the page: error rows first when the run is larger than max_rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = run.table
    if table.num_rows == 0:
        return []
    if "status" not in table.column_names:
        return table.slice(0, cfg.max_rows).to_pylist()
    is_ok = pc.fill_null(pc.equal(table["status"], "ok"), False)
    errors = table.filter(pc.invert(is_ok))
    if cfg.errors_only:
        return errors.slice(0, cfg.max_rows).to_pylist()
    if table.num_rows <= cfg.max_rows:
        return table.to_pylist()
    oks = table.filter(is_ok)
    if cfg.sort == "worst" and "qa_pass" in oks.column_names:  # QA failures are what a worst-first view is for
        failed = pc.fill_null(pc.equal(oks["qa_pass"], False), False)
        oks = pa.concat_tables([oks.filter(failed), oks.filter(pc.invert(failed))])
    picked = errors.slice(0, cfg.max_rows).to_pylist()
    return picked + oks.slice(0, max(0, cfg.max_rows - len(picked))).to_pylist()


def metric_columns(run: RunData) -> list[str]:
    t = run.table
    return sorted(c for c in t.column_names if c.startswith(METRIC_PREFIX) and t[c].null_count < t.num_rows)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    return v


# the card shows these report fields in places of their own; every other one is a labelled line of text
CARD_FIELDS = ("key", "status", "stage", "error", "shard")


def text_fields() -> list[str]:
    """The labels of the report fields (pipeline/fields.py) shown as lines of text on a row's card."""
    return [label for label, _ in report_fields() if label not in CARD_FIELDS]


def _row_view(row: dict[str, Any], thumbs: dict[str, str | None], metrics: list[str]) -> dict[str, Any]:
    timings = {k[3:]: round(row[k], 1) for k in timing_columns() if isinstance(row.get(k), (int, float))}
    view = {label: row.get(name) for label, name in report_fields()}
    view.update(key=str(row.get("key")), status=row.get("status") or "unknown")
    return {
        **view,
        "metrics": {m[len(METRIC_PREFIX) :]: _fmt(row[m]) for m in metrics if row.get(m) is not None},
        "qa": _qa_view(row),
        "ms": timings,
        "img": thumbs,
    }


def _qa_view(row: dict[str, Any]) -> dict[str, Any] | None:
    """The auto-QA figures of an edited row (pipeline.quality); None for a row without them (an error)."""
    if row.get("qa_change") is None:
        return None
    return {
        "change": _fmt(row["qa_change"]),
        "ssim": _fmt(row.get("qa_ssim")),
        "clip_t": _fmt(row.get("qa_clip_t")),
        "clip_dir": _fmt(row.get("qa_clip_dir")),
        "pass": row.get("qa_pass"),
    }


def worst_first(views: list[dict[str, Any]]) -> None:
    """Sets each row view's `worst` rank (0 = worst), the order of the page's worst-first sort: QA failures
    first, then the other rows with QA figures, rows without them (errors) last. Within each group the
    lowest CLIP directional similarity comes first (the edit went least where the instruction points);
    without CLIP figures, the most extreme change: the farthest from the page's median change on a log
    scale, so a near no-op (change ~0) and a replaced picture (a huge change) both come early. Ties keep
    the ledger order."""
    changes = sorted(v["qa"]["change"] for v in views if v["qa"])
    median = changes[len(changes) // 2] if changes else 0.0

    def badness(item: tuple[int, dict[str, Any]]) -> tuple[int, float, int]:
        index, view = item
        qa = view["qa"]
        if qa is None:
            return 2, 0.0, index
        score = qa["clip_dir"] if qa["clip_dir"] is not None else -abs(math.log((qa["change"] + 1.0) / (median + 1.0)))
        return (0 if qa["pass"] is False else 1), score, index

    for rank, (_, view) in enumerate(sorted(enumerate(views), key=badness)):
        view["worst"] = rank


# ---------------------------------------------------------------------------------------------- rendering


def build_report(
    output: str, cfg: ReportConfig | None = None, storage_options: dict | None = None, reach: Reach = FROM_ENVIRONMENT
) -> str:
    """The page of the run at `output`. Storage: `storage_options` for every URL it reads, or else
    as `reach` says for each (output, source shards)."""
    cfg = cfg or ReportConfig()
    run = load_run(output, storage_options, reach)
    rows = select_rows(run, cfg)
    unreachable: list[str] = []
    thumbs = collect_thumbnails(run, rows, cfg, storage_options, reach, unreachable)
    return render_html(run, rows, thumbs, cfg, unreachable)


def script_safe_json(value: Any) -> str:
    """JSON that cannot end or comment out the <script> it sits in: every <, > and & is a \\u escape
    (`</script>`, `<!--` and `<script` in an instruction would otherwise change how the page parses)."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    run: RunData, rows: list[dict[str, Any]], thumbs: Thumbs, cfg: ReportConfig, unreachable: list[str] | None = None
) -> str:
    from pipeline.evaluation.metrics import aggregate

    metrics = metric_columns(run)
    views = [_row_view(r, row_thumbnails(r, thumbs), metrics) for r in rows]
    worst_first(views)
    n_ok = run.count_ok()
    n_err = run.total_rows - n_ok
    table = aggregate({m[len(METRIC_PREFIX) :]: run.table[m].to_numpy(zero_copy_only=False) for m in metrics})
    title = cfg.title or f"mgie-batch run: {run.output}"
    identity = run.run.get("identity") or {}
    model = identity.get("model") or {}
    facts = {
        "output": run.output,
        "job": identity.get("job")
        or ("edit, summarizer pass" if identity.get("expressive") == "summarize" else "edit"),
        "run fingerprint": str(run.run.get("run_fingerprint") or "n/a")[:16],
        "model": (
            f"{run.run.get('model_source') or model.get('name', '')} "
            f"{str(model.get('fingerprint') or run.run.get('model_fingerprint') or 'n/a')[:12]}"
        ).strip(),
        "rows in ledger": run.total_rows,
        "ok": n_ok,
        "errors": n_err,
        "skipped (already done)": run.summary.get("skipped", "n/a"),
        "rows in this page": len(views),
    }
    if "qa_pass" in run.table.column_names:
        import pyarrow.compute as pc

        facts["QA failed"] = int(pc.sum(pc.fill_null(pc.equal(run.table["qa_pass"], False), False)).as_py() or 0)
    if run.orphans:
        facts["uncommitted units (not shown)"] = len(run.orphans)
    left_out = (n_err if cfg.errors_only else run.total_rows) - len(views)
    metric_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'n/a' if t['mean'] is None else format(t['mean'], '.4f')}</td>"
        f"<td>{t['count']}</td><td>{t['better']}</td></tr>"
        for name, t in table.items()
    )
    data = script_safe_json({"rows": views, "pageSize": cfg.page_size, "sort": cfg.sort, "fields": text_fields()})
    return render(
        title=html.escape(title),
        facts="".join(
            f"<div class='fact'><span>{html.escape(k)}</span><b>{html.escape(str(v))}</b></div>"
            for k, v in facts.items()
        ),
        metrics=(
            f"<table class='metrics'><tr><th>metric</th><th>mean</th><th>rows</th><th>better</th></tr>"
            f"{metric_rows}</table>"
        )
        if metrics
        else "",
        left_out=(
            (
                f"<p class='note'>{left_out} more rows are not embedded (max_rows {cfg.max_rows}); "
                f"use --errors-only or --max-rows.</p>"
            )
            if left_out > 0
            else ""
        )
        + "".join(f"<p class='note'>pictures missing: {html.escape(line)}</p>" for line in unreachable or []),
        data=data,
    )


def write_report(
    output: str,
    html_path: str,
    cfg: ReportConfig | None = None,
    storage_options: dict | None = None,
    reach: Reach = FROM_ENVIRONMENT,
) -> dict[str, Any]:
    """Builds the report for the run at `output` and writes it to `html_path` (local path or URL)."""
    cfg = cfg or ReportConfig()
    page = build_report(output, cfg, storage_options, reach)
    options = _options(html_path, storage_options, reach) if "://" in html_path else {}
    with fsspec.open(html_path, "w", encoding="utf-8", **options) as f:
        f.write(page)
    return {"html": html_path, "bytes": len(page.encode())}
