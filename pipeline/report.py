"""A self-contained HTML contact sheet of one run: per row the input, the edit (and the goal when the
input had one), instruction, expressive instruction, status or error, and metrics.

    html = build_report("s3://bucket/edits/run1", ReportConfig(errors_only=False, max_rows=2000))

Everything is in the one file: thumbnails are embedded as data URIs, the rows are a JSON block that a
small script pages through (50 rows a page by default), with filters for errors / ok and a text search.
Only committed units are shown (a unit without its commit record is an orphan of a crashed run). Large
runs are capped at `max_rows` embedded rows, error rows first, and the page says how many were left out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import fsspec
from PIL import Image

from .fields import METRIC_PREFIX, report_fields, timing_columns
from .layout import OutputLayout
from .shards import ShardReadError, iter_samples


@dataclass
class ReportConfig:
    errors_only: bool = False
    max_rows: int = 1000  # rows embedded in the page; error rows are kept first
    page_size: int = 50
    thumb_size: int = 160  # longest side of a thumbnail, px
    thumb_quality: int = 80  # JPEG quality of thumbnails
    title: str | None = None


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


def _options(url: str, storage_options: dict | None, endpoint_url: str | None) -> dict:
    """Explicit storage options apply to every URL; without them, the S3 endpoint applies to s3:// URLs."""
    from .storage import storage_options_for

    return storage_options if storage_options is not None else storage_options_for(url, endpoint_url)


def _fs(url: str, storage_options: dict | None, endpoint_url: str | None = None):
    fs, root = fsspec.core.url_to_fs(url, **_options(url, storage_options, endpoint_url))
    return fs, root.rstrip("/")


def _json_or_empty(fs, path: str) -> dict[str, Any]:
    return json.loads(fs.cat_file(path)) if fs.exists(path) else {}


def load_run(output: str, storage_options: dict | None = None, endpoint_url: str | None = None) -> RunData:
    """Reads the run record, the summary and the committed ledger under `output`: the winning commit of each
    unit (a superseded attempt left by a crash is not shown twice), as `read_ledger` gives it, whichever
    --output-format wrote it.

    The rows stay an Arrow table: counts and metric means are computed on columns, and only the rows that
    go into the page become Python objects (a run may have millions of rows).
    """
    from .ledger import load_state, read_ledger
    from .storage import Store

    fs, root = _fs(output, storage_options, endpoint_url)
    layout = OutputLayout(root)
    if not fs.exists(layout.url(layout.COMMITS)):
        raise FileNotFoundError(f"{output}: no ledger (no commit records); is this the output prefix of a run?")
    table = read_ledger(output, endpoint_url, storage_options)
    state = load_state(Store.open(output, endpoint_url, storage_options))
    orphans = sorted({unit for unit in map(layout.unit_of, state.orphans) if unit})
    return RunData(output, _json_or_empty(fs, layout.url(layout.RUN_RECORD)),
                   _json_or_empty(fs, layout.url(layout.SUMMARY)), table, orphans)


def _tar_images(fs, path: str, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """{key: {"image": bytes, "goal": bytes}} for the wanted keys of one input tar (one streaming pass),
    each the field the decode stage would pick: the first of IMAGE_EXTS the sample has."""
    from .stages import IMAGE_EXTS

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
    from .viewing import as_viewed_rgb

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


def collect_thumbnails(run: RunData, rows: list[dict[str, Any]], cfg: ReportConfig,
                       storage_options: dict | None = None, endpoint_url: str | None = None) -> Thumbs:
    """Thumbnails per (source or output shard, key), reading each shard once. Keyed by shard as well as
    key: the same key in two input shards is two rows with two pictures."""
    fs, root = _fs(run.output, storage_options, endpoint_url)
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
                sfs, spath = fsspec.core.url_to_fs(url, **_options(url, storage_options, endpoint_url))
            else:
                sfs, spath = (fs, url) if kind == "output" else fsspec.core.url_to_fs(url)
            if kind == "output":  # a tar or a Parquet file, as the run's --output-format wrote it
                from .writers import writer_of_path

                edits = writer_of_path(shard).read_images(sfs, spath, keys)
                images = {k: {"image": data} for k, data in edits.items()}
            else:
                images = _tar_images(sfs, spath, keys)
        except (OSError, tarfile.TarError, ValueError):
            continue  # an unreachable shard leaves its thumbnails empty; the rows still show
        for key, parts in images.items():
            thumbs[(kind, shard, key)] = {name: thumbnail(data, cfg.thumb_size, cfg.thumb_quality)
                                          for name, data in parts.items()}
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
        "metrics": {m[len(METRIC_PREFIX):]: _fmt(row[m]) for m in metrics if row.get(m) is not None},
        "ms": timings,
        "img": thumbs,
    }


# ---------------------------------------------------------------------------------------------- rendering


def build_report(output: str, cfg: ReportConfig | None = None, storage_options: dict | None = None,
                 endpoint_url: str | None = None) -> str:
    """The page of the run at `output`. Storage: `storage_options` for every URL it reads, or else
    `endpoint_url` for its s3:// URLs (output, source shards)."""
    cfg = cfg or ReportConfig()
    run = load_run(output, storage_options, endpoint_url)
    rows = select_rows(run, cfg)
    thumbs = collect_thumbnails(run, rows, cfg, storage_options, endpoint_url)
    return render_html(run, rows, thumbs, cfg)


def script_safe_json(value: Any) -> str:
    """JSON that cannot end or comment out the <script> it sits in: every <, > and & is a \\u escape
    (`</script>`, `<!--` and `<script` in an instruction would otherwise change how the page parses)."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(run: RunData, rows: list[dict[str, Any]], thumbs: Thumbs, cfg: ReportConfig) -> str:
    from .metrics import aggregate

    metrics = metric_columns(run)
    views = [_row_view(r, row_thumbnails(r, thumbs), metrics) for r in rows]
    n_ok = run.count_ok()
    n_err = run.total_rows - n_ok
    table = aggregate({m[len(METRIC_PREFIX):]: run.table[m].to_numpy(zero_copy_only=False) for m in metrics})
    title = cfg.title or f"mgie-batch run: {run.output}"
    identity = run.run.get("identity") or {}
    model = identity.get("model") or {}
    facts = {
        "output": run.output,
        "job": identity.get("job") or ("edit, summarizer pass" if identity.get("expressive") == "summarize" else "edit"),
        "run fingerprint": str(run.run.get("run_fingerprint") or "n/a")[:16],
        "model": (f"{run.run.get('model_source') or model.get('name', '')} "
                  f"{str(model.get('fingerprint') or run.run.get('model_fingerprint') or 'n/a')[:12]}").strip(),
        "rows in ledger": run.total_rows, "ok": n_ok, "errors": n_err,
        "skipped (already done)": run.summary.get("skipped", "n/a"),
        "rows in this page": len(views),
    }
    if run.orphans:
        facts["uncommitted units (not shown)"] = len(run.orphans)
    left_out = (n_err if cfg.errors_only else run.total_rows) - len(views)
    metric_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'n/a' if t['mean'] is None else format(t['mean'], '.4f')}</td>"
        f"<td>{t['count']}</td><td>{t['better']}</td></tr>"
        for name, t in table.items())
    data = script_safe_json({"rows": views, "pageSize": cfg.page_size, "fields": text_fields()})
    return _TEMPLATE.format(
        title=html.escape(title),
        facts="".join(f"<div class='fact'><span>{html.escape(k)}</span><b>{html.escape(str(v))}</b></div>"
                      for k, v in facts.items()),
        metrics=(f"<table class='metrics'><tr><th>metric</th><th>mean</th><th>rows</th><th>better</th></tr>"
                 f"{metric_rows}</table>") if metrics else "",
        left_out=(f"<p class='note'>{left_out} more rows are not embedded (max_rows {cfg.max_rows}); "
                  f"use --errors-only or --max-rows.</p>") if left_out > 0 else "",
        data=data,
    )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }}
header {{ background: #1d2330; color: #fff; padding: 14px 20px; }}
header h1 {{ font-size: 18px; margin: 0 0 8px; word-break: break-all; }}
.facts {{ display: flex; flex-wrap: wrap; gap: 6px 18px; }}
.fact span {{ color: #aab3c5; margin-right: 6px; }}
.metrics {{ border-collapse: collapse; margin: 12px 20px 0; background: #fff; }}
.metrics td, .metrics th {{ border: 1px solid #d5d9e0; padding: 3px 10px; text-align: left; }}
.bar {{ position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #d5d9e0;
        padding: 8px 20px; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }}
.bar button {{ border: 1px solid #9aa3b5; background: #fff; border-radius: 4px; padding: 4px 10px; cursor: pointer; }}
.bar button.on {{ background: #1d2330; color: #fff; }}
.bar input {{ padding: 4px 8px; min-width: 220px; }}
.note {{ margin: 8px 20px; color: #8a5a00; }}
#rows {{ padding: 12px 20px; display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }}
.card {{ background: #fff; border: 1px solid #d5d9e0; border-left: 5px solid #2f9e44; border-radius: 6px; padding: 10px; }}
.card.error {{ border-left-color: #e03131; }}
.thumbs {{ display: flex; gap: 8px; }}
.thumbs figure {{ margin: 0; text-align: center; font-size: 11px; color: #5c6475; }}
.thumbs img, .thumbs .none {{ width: 160px; height: 160px; object-fit: contain; background: #eceef2; display: block; }}
.thumbs .none {{ display: flex; align-items: center; justify-content: center; color: #9aa3b5; }}
.key {{ font-weight: 600; word-break: break-all; }}
.badge {{ display: inline-block; border-radius: 3px; padding: 0 6px; font-size: 12px; color: #fff; background: #2f9e44; }}
.error .badge {{ background: #e03131; }}
.field {{ margin-top: 4px; }} .field span {{ color: #5c6475; }}
.err {{ color: #c92a2a; white-space: pre-wrap; word-break: break-word; }}
.chips span {{ display: inline-block; background: #edf2ff; border-radius: 3px; padding: 0 6px; margin: 2px 4px 0 0; font-size: 12px; }}
.empty {{ padding: 30px 20px; color: #5c6475; }}
</style></head>
<body>
<header><h1>{title}</h1><div class="facts">{facts}</div></header>
{metrics}
{left_out}
<div class="bar">
  <button id="f-all" class="on">All</button><button id="f-error">Errors</button><button id="f-ok">OK</button>
  <input id="search" type="search" placeholder="search key, instruction, error">
  <button id="prev">&larr; Prev</button><span id="pageinfo"></span><button id="next">Next &rarr;</button>
  <span id="row-count"></span>
</div>
<noscript><p class="note">This page pages through its rows with a small script; enable JavaScript to see them.</p></noscript>
<main id="rows"></main>
<script type="application/json" id="data">{data}</script>
<script>
(function () {{
  const data = JSON.parse(document.getElementById('data').textContent);
  const all = data.rows, size = data.pageSize, fields = data.fields;
  let filter = 'all', query = '', page = 0;
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has('errors')) filter = 'error';
  if (hash.has('page')) page = Math.max(0, parseInt(hash.get('page'), 10) - 1 || 0);
  function el(tag, cls, text) {{
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }}
  function field(card, label, value, cls) {{
    if (value === undefined || value === null || value === '') return;
    const d = el('div', 'field'); d.appendChild(el('span', null, label + ': '));
    d.appendChild(el('span', cls || 'value', value)); card.appendChild(d);
  }}
  function thumb(box, src, label) {{
    const f = el('figure');
    if (src) {{ const i = el('img'); i.loading = 'lazy'; i.src = src; i.alt = label; f.appendChild(i); }}
    else f.appendChild(el('div', 'none', 'no image'));
    f.appendChild(el('figcaption', null, label)); box.appendChild(f);
  }}
  function matches(r) {{
    if (filter === 'error' && r.status === 'ok') return false;
    if (filter === 'ok' && r.status !== 'ok') return false;
    if (!query) return true;
    return [r.key, r.error, r.stage, ...fields.map(f => r[f])].some(v => v !== null && v !== undefined && String(v).toLowerCase().includes(query));
  }}
  function render() {{
    const rows = all.filter(matches);
    const pages = Math.max(1, Math.ceil(rows.length / size));
    page = Math.min(page, pages - 1);
    const box = document.getElementById('rows'); box.textContent = '';
    for (const r of rows.slice(page * size, page * size + size)) {{
      const card = el('section', 'card' + (r.status === 'ok' ? '' : ' error'));
      card.dataset.key = r.key; card.dataset.status = r.status;
      const head = el('div'); head.appendChild(el('span', 'badge', r.status)); head.appendChild(document.createTextNode(' '));
      head.appendChild(el('span', 'key', r.key)); card.appendChild(head);
      const t = el('div', 'thumbs');
      thumb(t, r.img.input, 'input'); thumb(t, r.img.edit, 'edit');
      if (r.img.goal) thumb(t, r.img.goal, 'goal');
      card.appendChild(t);
      for (const f of fields) field(card, f, r[f]);
      if (r.status !== 'ok') field(card, 'error' + (r.stage ? ' in ' + r.stage : ''), r.error || '(no message)', 'err');
      const m = Object.entries(r.metrics);
      if (m.length) {{ const c = el('div', 'chips'); for (const [k, v] of m) c.appendChild(el('span', null, k + ' ' + v)); card.appendChild(c); }}
      const ms = Object.entries(r.ms);
      if (ms.length) field(card, 'ms', ms.map(([k, v]) => k + ' ' + v).join(', '));
      box.appendChild(card);
    }}
    if (!rows.length) box.appendChild(el('div', 'empty', 'No rows match.'));
    document.getElementById('pageinfo').textContent = 'page ' + (page + 1) + ' of ' + pages;
    document.getElementById('row-count').textContent = rows.length + ' rows';
    for (const f of ['all', 'error', 'ok']) document.getElementById('f-' + f).classList.toggle('on', f === filter);
  }}
  for (const f of ['all', 'error', 'ok']) document.getElementById('f-' + f).onclick = () => {{ filter = f; page = 0; render(); }};
  document.getElementById('prev').onclick = () => {{ page = Math.max(0, page - 1); render(); }};
  document.getElementById('next').onclick = () => {{ page += 1; render(); }};
  document.getElementById('search').oninput = e => {{ query = e.target.value.trim().toLowerCase(); page = 0; render(); }};
  render();
}})();
</script>
</body></html>
"""


def write_report(output: str, html_path: str, cfg: ReportConfig | None = None,
                 storage_options: dict | None = None, endpoint_url: str | None = None) -> dict[str, Any]:
    """Builds the report for the run at `output` and writes it to `html_path` (local path or URL)."""
    cfg = cfg or ReportConfig()
    page = build_report(output, cfg, storage_options, endpoint_url)
    options = _options(html_path, storage_options, endpoint_url) if "://" in html_path else {}
    with fsspec.open(html_path, "w", encoding="utf-8", **options) as f:
        f.write(page)
    return {"html": html_path, "bytes": len(page.encode())}
