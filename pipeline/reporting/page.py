"""The report's page: one HTML template with its style and script (pipeline.reporting.report fills it in).

The script reads the rows from the page's JSON block and pages through them. Controls: All / Errors / OK /
QA failed filters, a text search, and a sort (ledger order, or worst QA first by each row's `worst` rank,
which pipeline.reporting.report computes). The URL's hash can preset them: `#errors`, `#qa-failed`, `#sort=worst`,
`#page=N`.

The page carries a Content-Security-Policy (`CSP`): the style and the script run by their sha256, so the
template must put `STYLE` and `SCRIPT` into their elements byte for byte (`render` does; tests check it in
Chromium).
"""

import base64
import hashlib

STYLE = r"""body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 14px 20px; }
header h1 { font-size: 18px; margin: 0 0 8px; word-break: break-all; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 18px; }
.fact span { color: #aab3c5; margin-right: 6px; }
.metrics { border-collapse: collapse; margin: 12px 20px 0; background: #fff; }
.metrics td, .metrics th { border: 1px solid #d5d9e0; padding: 3px 10px; text-align: left; }
.bar { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #d5d9e0;
        padding: 8px 20px; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.bar button { border: 1px solid #9aa3b5; background: #fff; border-radius: 4px; padding: 4px 10px; cursor: pointer; }
.bar button.on { background: #1d2330; color: #fff; }
.bar input { padding: 4px 8px; min-width: 220px; }
.note { margin: 8px 20px; color: #8a5a00; }
#rows { padding: 12px 20px; display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #d5d9e0; border-left: 5px solid #2f9e44; border-radius: 6px; padding: 10px; }
.card.error { border-left-color: #e03131; }
.card.qa-fail { border-left-color: #f08c00; }
.thumbs { display: flex; gap: 8px; }
.thumbs figure { margin: 0; text-align: center; font-size: 11px; color: #5c6475; }
.thumbs img, .thumbs .none { width: 160px; height: 160px; object-fit: contain; background: #eceef2; display: block; }
.thumbs .none { display: flex; align-items: center; justify-content: center; color: #9aa3b5; }
.key { font-weight: 600; word-break: break-all; }
.badge { display: inline-block; border-radius: 3px; padding: 0 6px; font-size: 12px; color: #fff; background: #2f9e44; }
.error .badge { background: #e03131; }
.qa { margin-top: 4px; font-size: 12px; }
.qa b { border-radius: 3px; padding: 0 6px; color: #fff; background: #2f9e44; font-weight: 500; }
.qa b.fail { background: #f08c00; } .qa b.unchecked { background: #868e96; }
.qa span { margin-left: 8px; color: #3b4252; }
.field { margin-top: 4px; } .field span { color: #5c6475; }
.err { color: #c92a2a; white-space: pre-wrap; word-break: break-word; }
.chips span { display: inline-block; background: #edf2ff; border-radius: 3px; padding: 0 6px; margin: 2px 4px 0 0; font-size: 12px; }
.empty { padding: 30px 20px; color: #5c6475; }
"""

SCRIPT = r"""(function () {
  const data = JSON.parse(document.getElementById('data').textContent);
  const all = data.rows, size = data.pageSize, fields = data.fields;
  const filters = ['all', 'error', 'ok', 'qa'];
  let filter = 'all', query = '', page = 0, sort = data.sort || 'ledger';
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has('errors')) filter = 'error';
  if (hash.has('qa-failed')) filter = 'qa';
  if (hash.get('sort') === 'worst' || hash.get('sort') === 'ledger') sort = hash.get('sort');
  if (hash.has('page')) page = Math.max(0, parseInt(hash.get('page'), 10) - 1 || 0);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function field(card, label, value, cls) {
    if (value === undefined || value === null || value === '') return;
    const d = el('div', 'field'); d.appendChild(el('span', null, label + ': '));
    d.appendChild(el('span', cls || 'value', value)); card.appendChild(d);
  }
  function thumb(box, src, label) {
    const f = el('figure');
    if (src) { const i = el('img'); i.loading = 'lazy'; i.src = src; i.alt = label; f.appendChild(i); }
    else f.appendChild(el('div', 'none', 'no image'));
    f.appendChild(el('figcaption', null, label)); box.appendChild(f);
  }
  function qaLine(card, qa) {
    const d = el('div', 'qa');
    const verdict = qa.pass === false ? 'fail' : qa.pass === true ? 'pass' : 'unchecked';
    d.appendChild(el('b', verdict, 'QA ' + (verdict === 'unchecked' ? 'no bounds' : verdict)));
    const figures = [['change', qa.change], ['SSIM', qa.ssim], ['clip_t', qa.clip_t], ['clip_dir', qa.clip_dir]];
    for (const [name, value] of figures) if (value !== null && value !== undefined) d.appendChild(el('span', null, name + ' ' + value));
    card.appendChild(d);
  }
  function matches(r) {
    if (filter === 'error' && r.status === 'ok') return false;
    if (filter === 'ok' && r.status !== 'ok') return false;
    if (filter === 'qa' && !(r.qa && r.qa.pass === false)) return false;
    if (!query) return true;
    return [r.key, r.error, r.stage, ...fields.map(f => r[f])].some(v => v !== null && v !== undefined && String(v).toLowerCase().includes(query));
  }
  function render() {
    const rows = all.filter(matches);
    if (sort === 'worst') rows.sort((a, b) => a.worst - b.worst);
    const pages = Math.max(1, Math.ceil(rows.length / size));
    page = Math.min(page, pages - 1);
    const box = document.getElementById('rows'); box.textContent = '';
    for (const r of rows.slice(page * size, page * size + size)) {
      const failed = r.qa && r.qa.pass === false;
      const card = el('section', 'card' + (r.status === 'ok' ? '' : ' error') + (failed ? ' qa-fail' : ''));
      card.dataset.key = r.key; card.dataset.status = r.status;
      card.dataset.qa = r.qa ? (r.qa.pass === false ? 'fail' : r.qa.pass === true ? 'pass' : 'unchecked') : 'none';
      const head = el('div'); head.appendChild(el('span', 'badge', r.status)); head.appendChild(document.createTextNode(' '));
      head.appendChild(el('span', 'key', r.key)); card.appendChild(head);
      const t = el('div', 'thumbs');
      thumb(t, r.img.input, 'input'); thumb(t, r.img.edit, 'edit');
      if (r.img.goal) thumb(t, r.img.goal, 'goal');
      card.appendChild(t);
      if (r.qa) qaLine(card, r.qa);
      for (const f of fields) field(card, f, r[f]);
      if (r.status !== 'ok') field(card, 'error' + (r.stage ? ' in ' + r.stage : ''), r.error || '(no message)', 'err');
      const m = Object.entries(r.metrics);
      if (m.length) { const c = el('div', 'chips'); for (const [k, v] of m) c.appendChild(el('span', null, k + ' ' + v)); card.appendChild(c); }
      const ms = Object.entries(r.ms);
      if (ms.length) field(card, 'ms', ms.map(([k, v]) => k + ' ' + v).join(', '));
      box.appendChild(card);
    }
    if (!rows.length) box.appendChild(el('div', 'empty', 'No rows match.'));
    document.getElementById('pageinfo').textContent = 'page ' + (page + 1) + ' of ' + pages;
    document.getElementById('row-count').textContent = rows.length + ' rows';
    for (const f of filters) document.getElementById('f-' + f).classList.toggle('on', f === filter);
    document.getElementById('sort').value = sort;
  }
  for (const f of filters) document.getElementById('f-' + f).onclick = () => { filter = f; page = 0; render(); };
  document.getElementById('sort').onchange = e => { sort = e.target.value; page = 0; render(); };
  document.getElementById('prev').onclick = () => { page = Math.max(0, page - 1); render(); };
  document.getElementById('next').onclick = () => { page += 1; render(); };
  document.getElementById('search').oninput = e => { query = e.target.value.trim().toLowerCase(); page = 0; render(); };
  render();
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


# Only the page's own style and script run (by hash: the page is one static file, so no nonce is needed),
# pictures come only from the page itself (data: URIs), nothing is loaded from anywhere and nothing is sent:
# a value that ever escaped its escaping could still inject markup, but not run script or call home.
CSP = (
    f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head>
<body>
<header><h1>{title}</h1><div class="facts">{facts}</div></header>
{metrics}
{left_out}
<div class="bar">
  <button id="f-all" class="on">All</button><button id="f-error">Errors</button><button id="f-ok">OK</button>
  <button id="f-qa">QA failed</button>
  <label>sort <select id="sort"><option value="ledger">ledger order</option>
    <option value="worst">worst QA first</option></select></label>
  <input id="search" type="search" placeholder="search key, instruction, error">
  <button id="prev">&larr; Prev</button><span id="pageinfo"></span><button id="next">Next &rarr;</button>
  <span id="row-count"></span>
</div>
<noscript><p class="note">This page pages through its rows with a small script; enable JavaScript to see them.</p></noscript>
<main id="rows"></main>
<script type="application/json" id="data">{data}</script>
<script>{script}</script>
</body></html>
"""


def render(**fields: str) -> str:
    """The page with its style, script and policy; `fields` are the escaped title, facts, metrics, left_out and
    data."""
    return PAGE.format(style=STYLE, script=SCRIPT, csp=CSP, **fields)
