"""The HTML report: built from a run's output layout (ledger, shards, commit records), then opened in
headless Chromium, which must show the expected rows, the error and QA-failed filters, the worst-QA-first
sort and the thumbnails."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.reporting.report import ReportConfig, build_report, load_run, write_report
from pipeline.shards import tar_bytes
from tests.local_http import QuietHandler

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
EDIT_COLOUR = (250, 20, 200)  # edited thumbnails are this flat colour, so the screenshot can find them


def _png(rgb, size=(40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(files.items()))  # the pipeline's own tar writer


def _ledger_row(key, status="ok", **extra):
    row = {
        "key": key,
        "source_shard": None,
        "status": status,
        "error_stage": None,
        "error": None,
        "instruction": f"instruction for {key}",
        "expressive_instruction": None,
        "seed": 13331,
        "output_shard": None,
        "run_fingerprint": "f" * 64,
        "ms_decode": 1.0,
        "ms_express": 2.0,
        "ms_edit": 3.0,
        "ms_encode": 0.5,
        "metric_l1": None,
        "qa_change": None,
        "qa_ssim": None,
        "qa_clip_t": None,
        "qa_clip_dir": None,
        "qa_pass": None,
    }
    row.update(extra)
    return row


# auto-QA figures of the ok rows, by i % 5: (change, SSIM, clip_t, clip_dir, pass)
QA = [
    (12.0, 0.8, 0.25, 0.30, True),
    (3.0, 0.95, 0.20, 0.02, False),
    (25.0, 0.6, 0.22, 0.10, True),
    (0.1, 0.999, 0.18, -0.05, False),
    (15.0, 0.7, 0.30, 0.20, True),
]
WORST_FIRST = ["ok03", "ok01", "ok02", "ok04", "ok00", "bad00", "bad01"]  # failures, then by clip_dir; errors last


def _qa(i: int) -> dict:
    return dict(zip(("qa_change", "qa_ssim", "qa_clip_t", "qa_clip_dir", "qa_pass"), QA[i % len(QA)]))


def make_run(root: Path, n_ok: int = 5, n_err: int = 2) -> Path:
    """A run output laid out as the pipeline writes it: one committed unit, one orphan unit."""
    inputs = root / "inputs" / "in-000.tar"
    out = root / "run"
    rows, in_files, out_files = [], {}, {}
    rng = np.random.default_rng(0)
    for i in range(n_ok):
        key = f"ok{i:02d}"
        in_files[f"{key}.jpg"] = _png(tuple(int(x) for x in rng.integers(0, 256, 3)))
        in_files[f"{key}.txt"] = b"x"
        if i == 0:
            in_files[f"{key}.goal.png"] = _png((0, 0, 255))
        out_files[f"{key}.png"] = _png(EDIT_COLOUR)
        out_files[f"{key}.json"] = b"{}"
        rows.append(
            _ledger_row(
                key,
                source_shard=str(inputs),
                output_shard="shards/unit-0.tar",
                expressive_instruction=f"an expressive take on {key}",
                metric_l1=0.1 * (i + 1),
                **_qa(i),
            )
        )
    for j in range(n_err):
        key = f"bad{j:02d}"
        in_files[f"{key}.jpg"] = b"not an image"
        rows.append(
            _ledger_row(
                key,
                "error",
                source_shard=str(inputs),
                error_stage="decode",
                error=f"{key}.jpg: cannot identify image file",
                seed=None,
            )
        )
    # text that would end a <script> block if the page did not escape it
    rows[1]["instruction"] = "</script><h1 id='injected'>x</h1>"
    for i, row in enumerate(rows):
        row["row_index"] = i
    _tar(inputs, in_files)
    _tar(out / "shards" / "unit-0.tar", out_files)
    (out / "ledger").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "ledger" / "unit-0.parquet")
    pq.write_table(
        pa.Table.from_pylist([_ledger_row("orphan00", source_shard=str(inputs))]), out / "ledger" / "unit-1.parquet"
    )  # a crash before its commit record
    (out / "commits").mkdir()
    (out / "commits" / "unit-0.json").write_text(json.dumps(_commit("unit-0", str(inputs), len(rows))))
    (out / "run.json").write_text(json.dumps({"run_fingerprint": "ab" * 32, "model_fingerprint": "cd" * 32}))
    (out / "summary.json").write_text(json.dumps({"read": len(rows), "ok": n_ok, "error": n_err, "skipped": 0}))
    return out


def _commit(unit: str, source: str, n_rows: int, base: str = "unit-0", attempt: int = 0) -> dict:
    """A commit record as the driver writes it (the fields the readers use)."""
    return {
        "unit": unit,
        "base": base,
        "attempt": attempt,
        "source_shard": source,
        "index": 0,
        "last": True,
        "n_rows": n_rows,
        "counts": {"ok": n_rows, "error": 0},
        "error_rows": [],
        "files": {"ledger": f"ledger/{unit}.parquet", "shard": f"shards/{unit}.tar"},
    }


def page_data(page: str) -> dict:
    """The rows and tables a report page embeds (its JSON data block; tests/test_eval_job.py uses it too)."""
    block = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    return json.loads(block.replace("<\\/", "</"))


def test_report_embeds_committed_rows_with_thumbnails(tmp_path):
    out = make_run(tmp_path)
    run = load_run(str(out))
    assert run.total_rows == 7 and run.orphans == ["unit-1"]
    page = build_report(str(out))
    data = page_data(page)
    keys = [r["key"] for r in data["rows"]]
    assert sorted(keys) == ["bad00", "bad01", "ok00", "ok01", "ok02", "ok03", "ok04"]  # no orphan row
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["ok00"]["img"]["input"].startswith("data:image/jpeg;base64,")
    assert rows["ok00"]["img"]["edit"] and rows["ok00"]["img"]["goal"]
    assert rows["ok01"]["img"]["goal"] is None
    assert rows["bad00"]["img"] == {"input": None, "edit": None, "goal": None}  # broken input: no thumbnail, no crash
    assert rows["bad00"]["stage"] == "decode" and "cannot identify" in rows["bad00"]["error"]
    assert rows["ok02"]["metrics"] == {"l1": 0.3} and rows["ok02"]["expressive"] == "an expressive take on ok02"
    assert "</script><h1 id='injected'>" not in page  # the JSON block escapes "</" so the script cannot end early
    assert "uncommitted units (not shown)" in page and "<td>l1</td><td>0.3000</td>" in page


def test_superseded_attempt_is_not_shown_twice(tmp_path):
    """After a crash a unit's old commit and its retry can both have records: only the winner counts."""
    out = make_run(tmp_path)
    retry = pq.read_table(out / "ledger" / "unit-0.parquet").to_pylist()
    for row in retry:
        row.update(status="ok", error_stage=None, error=None)
    pq.write_table(pa.Table.from_pylist(retry), out / "ledger" / "unit-0-r1.parquet")
    source = retry[0]["source_shard"]
    (out / "commits" / "unit-0-r1.json").write_text(json.dumps(_commit("unit-0-r1", source, len(retry), attempt=1)))
    run = load_run(str(out))
    assert run.total_rows == 7 and run.count_ok() == 7
    assert run.orphans == ["unit-0", "unit-1"]  # the superseded attempt's files are orphans now
    keys = [r["key"] for r in page_data(build_report(str(out)))["rows"]]
    assert len(keys) == len(set(keys)) == 7


def test_errors_only_and_row_cap(tmp_path):
    out = make_run(tmp_path, n_ok=6, n_err=3)
    errors = page_data(build_report(str(out), ReportConfig(errors_only=True)))["rows"]
    assert [r["key"] for r in errors] == ["bad00", "bad01", "bad02"]
    capped_page = build_report(str(out), ReportConfig(max_rows=4))
    capped = page_data(capped_page)["rows"]
    # error rows are kept first when the run is larger than the cap
    assert [r["status"] for r in capped] == ["error"] * 3 + ["ok"] and "5 more rows are not embedded" in capped_page
    with pytest.raises(FileNotFoundError, match="no ledger"):
        build_report(str(tmp_path / "nothing"))


def test_report_shows_the_qa_figures_and_ranks_rows_worst_first(tmp_path):
    out = make_run(tmp_path)
    page = build_report(str(out))
    data = page_data(page)
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["ok01"]["qa"] == {"change": 3.0, "ssim": 0.95, "clip_t": 0.2, "clip_dir": 0.02, "pass": False}
    assert rows["bad00"]["qa"] is None and data["sort"] == "ledger"
    assert sorted(data["rows"], key=lambda r: r["worst"]) == [rows[k] for k in WORST_FIRST]
    assert "<span>QA failed</span><b>2</b>" in page
    assert page_data(build_report(str(out), ReportConfig(sort="worst")))["sort"] == "worst"
    with pytest.raises(ValueError, match="--sort must be one of ledger, worst"):
        ReportConfig(sort="best")
    # a capped page sorted worst first keeps the QA failures among its ok rows
    capped = page_data(
        build_report(str(make_run(tmp_path / "big", n_ok=6, n_err=1)), ReportConfig(max_rows=4, sort="worst"))
    )["rows"]
    assert [r["key"] for r in capped] == ["bad00", "ok01", "ok03", "ok00"]


def test_without_clip_figures_the_most_extreme_change_comes_first():
    from pipeline.reporting.report import worst_first

    views = [{"qa": {"change": c, "clip_dir": None, "pass": None}} for c in (10.0, 0.05, 12.0, 90.0, 9.0)]
    views.append({"qa": None})
    worst_first(views)
    # the median change is 10: the no-op (0.05) and the replacement (90) are the extremes, the error is last
    assert [v["worst"] for v in views] == [4, 0, 2, 1, 3, 5]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium. The tests never install it: `make test-deps` does (CI's .ci/run calls it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium for the browser tests: `make test-deps` installs it (apt-get install chromium)")
    return found


def _browser(chromium: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1300,1400",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path, chromium):
    out = make_run(tmp_path)
    html_path = tmp_path / "report.html"
    written = write_report(str(out), str(html_path))
    assert written["bytes"] > 1000

    # the DOM after the page's script ran: one card per row, error filter from the URL
    dom = _browser(chromium, tmp_path, html_path.as_uri(), "--dump-dom").stdout
    cards = re.findall(r'<section class="card( error)?(?: qa-fail)?" data-key="([^"]+)" data-status="([^"]+)"', dom)
    assert sorted(k for _, k, _ in cards) == ["bad00", "bad01", "ok00", "ok01", "ok02", "ok03", "ok04"]
    assert all((cls == " error") == (status == "error") for cls, _, status in cards)
    assert "7 rows" in dom and 'id="injected"' not in dom
    assert "&lt;/script&gt;&lt;h1 id='injected'&gt;x&lt;/h1&gt;" in dom  # shown as text
    errors_dom = _browser(chromium, tmp_path, html_path.as_uri() + "#errors", "--dump-dom").stdout
    assert sorted(re.findall(r'data-key="([^"]+)"', errors_dom)) == ["bad00", "bad01"]

    # screenshots: the full page shows the edited thumbnails; the error view shows none of them
    shots = {}
    for name, url in (("all", html_path.as_uri()), ("errors", html_path.as_uri() + "#errors")):
        shot = tmp_path / f"{name}.png"
        result = _browser(chromium, tmp_path, url, f"--screenshot={shot}")
        assert shot.exists(), result.stderr[-2000:]
        shots[name] = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    shutil.copy(tmp_path / "all.png", tmp_path.parent / "report-screenshot.png")  # kept for a person to look at

    def near(img, rgb, tol=30):
        return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())

    assert shots["all"].shape[:2] == (1400, 1300)
    assert shots["all"].std() > 10, "blank page"
    assert near(shots["all"], EDIT_COLOUR) > 5 * 100 * 100  # five edited thumbnails at ~160 x 128 px
    assert near(shots["errors"], EDIT_COLOUR) == 0
    assert near(shots["errors"], (224, 49, 49)) > 200  # the red error markers


# a page that opens the report in a frame, works its controls as a person would (the sort menu, then the
# QA-failed button) and writes the card order it saw after each step into its own DOM, for --dump-dom
CONTROLS_HARNESS = """<!DOCTYPE html><html><body><pre id="seen">waiting</pre>
<iframe id="report" src="report.html" width="1300" height="1400"></iframe>
<script>
document.getElementById('report').onload = () => {
  const page = document.getElementById('report').contentDocument;
  const keys = () => [...page.querySelectorAll('section.card')].map(c => c.dataset.key + ':' + c.dataset.qa);
  const seen = {ledger: keys()};
  const sort = page.getElementById('sort');
  sort.value = 'worst'; sort.dispatchEvent(new Event('change'));
  seen.worst = keys();
  page.getElementById('f-qa').click();
  seen.qaFailed = keys();
  page.getElementById('f-all').click();
  seen.allAgain = keys();
  document.getElementById('seen').textContent = JSON.stringify(seen);
};
</script></body></html>"""


@pytest.mark.slow
def test_qa_sort_and_filter_in_headless_chromium(tmp_path, chromium):
    out = make_run(tmp_path)
    html_path = tmp_path / "report.html"
    write_report(str(out), str(html_path))

    def cards(url: str) -> list[str]:
        dom = _browser(chromium, tmp_path, url, "--dump-dom").stdout
        return re.findall(r'<section class="card[^"]*" data-key="([^"]+)"', dom)

    ledger = ["ok00", "ok01", "ok02", "ok03", "ok04", "bad00", "bad01"]
    assert cards(html_path.as_uri()) == ledger
    assert cards(html_path.as_uri() + "#sort=worst") == WORST_FIRST
    assert cards(html_path.as_uri() + "#qa-failed") == ["ok01", "ok03"]
    assert cards(html_path.as_uri() + "#qa-failed&sort=worst") == ["ok03", "ok01"]
    flagged = tmp_path / "flagged.html"  # --sort worst: the page opens sorted
    write_report(str(out), str(flagged), ReportConfig(sort="worst"))
    assert cards(flagged.as_uri()) == WORST_FIRST

    # the controls themselves, clicked in the page
    harness = tmp_path / "harness.html"
    harness.write_text(CONTROLS_HARNESS)
    dom = _browser(chromium, tmp_path, harness.as_uri(), "--allow-file-access-from-files", "--dump-dom").stdout
    seen = json.loads(html.unescape(re.search(r'<pre id="seen">(.*?)</pre>', dom, re.S).group(1)))
    qa_of = {"ok01": "fail", "ok03": "fail", "bad00": "none", "bad01": "none"}
    assert seen["ledger"] == [f"{k}:{qa_of.get(k, 'pass')}" for k in ledger]
    assert seen["worst"] == [f"{k}:{qa_of.get(k, 'pass')}" for k in WORST_FIRST]
    assert seen["qaFailed"] == ["ok03:fail", "ok01:fail"]  # the filter keeps the sort
    assert seen["allAgain"] == seen["worst"]

    # the QA line shows on the cards: figures and the verdict, the failures marked in orange
    dom = _browser(chromium, tmp_path, html_path.as_uri() + "#qa-failed", "--dump-dom").stdout
    assert "QA fail" in dom and "clip_dir 0.02" in dom and "change 3" in dom and "SSIM 0.95" in dom
    shot = tmp_path / "qa.png"
    _browser(chromium, tmp_path, html_path.as_uri() + "#qa-failed", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert int((np.abs(pixels - np.array((240, 140, 0))).max(axis=2) <= 30).sum()) > 2 * 100  # orange marks


def test_report_of_a_run_on_s3(tmp_path, s3):
    """Ledger, shards and the page itself on the real local S3 endpoint."""
    import fsspec

    out = make_run(tmp_path)
    bucket = s3.new_bucket("report")
    fs = fsspec.filesystem("s3", **s3.storage_options())
    for path in out.rglob("*"):
        if path.is_file():
            fs.pipe(f"{bucket}/run/{path.relative_to(out).as_posix()}", path.read_bytes())
    # the input shard moves to S3 too, and the ledger's source_shard points there
    inputs = tmp_path / "inputs" / "in-000.tar"
    fs.pipe(f"{bucket}/inputs/in-000.tar", inputs.read_bytes())
    table = pq.read_table(out / "ledger" / "unit-0.parquet")
    table = table.set_column(
        table.column_names.index("source_shard"),
        "source_shard",
        pa.array([f"s3://{bucket}/inputs/in-000.tar"] * table.num_rows),
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs.pipe(f"{bucket}/run/ledger/unit-0.parquet", buf.getvalue())

    written = write_report(f"s3://{bucket}/run", f"s3://{bucket}/report.html", ReportConfig(), s3.storage_options())
    page = fs.cat(f"{bucket}/report.html").decode()
    assert written["bytes"] == len(page.encode())
    rows = {r["key"]: r for r in page_data(page)["rows"]}
    assert len(rows) == 7 and rows["ok03"]["img"]["input"] and rows["ok03"]["img"]["edit"]


@pytest.mark.slow
def test_hostile_instruction_and_repeated_keys_in_headless_chromium(tmp_path, chromium):
    """`<!--<script>` in an instruction must not blank the page, and the same key in two input shards is two
    cards, each with the pictures of its own shard."""
    out = make_run(tmp_path, n_ok=2, n_err=0)
    table = pq.read_table(out / "ledger" / "unit-0.parquet").to_pylist()
    table[0]["instruction"] = "<!--<script>"
    pq.write_table(pa.Table.from_pylist(table), out / "ledger" / "unit-0.parquet")
    other_in, other_edit = (10, 200, 10), (10, 10, 250)
    second = tmp_path / "inputs" / "in-001.tar"
    _tar(second, {"ok00.jpg": _png(other_in), "ok00.txt": b"x"})  # a key the first shard has too
    _tar(out / "shards" / "unit-2.tar", {"ok00.png": _png(other_edit), "ok00.json": b"{}"})
    row = _ledger_row("ok00", source_shard=str(second), output_shard="shards/unit-2.tar", row_index=0)
    pq.write_table(pa.Table.from_pylist([row]), out / "ledger" / "unit-2.parquet")
    (out / "commits" / "unit-2.json").write_text(json.dumps(_commit("unit-2", str(second), 1, base="unit-2")))
    html_path = tmp_path / "report.html"
    write_report(str(out), str(html_path))

    page = html_path.read_text()
    assert "<!--<script>" not in page  # every < in the data block is \u003c
    twins = [r for r in page_data(page)["rows"] if r["key"] == "ok00"]
    assert len(twins) == 2 and twins[0]["img"]["input"] != twins[1]["img"]["input"]
    assert twins[0]["img"]["edit"] != twins[1]["img"]["edit"]
    dom = _browser(chromium, tmp_path, html_path.as_uri(), "--dump-dom").stdout
    cards = re.findall(r'<section class="card( error)?(?: qa-fail)?" data-key="([^"]+)"', dom)
    assert sorted(k for _, k in cards) == ["ok00", "ok00", "ok01"], dom[-2000:]
    assert "&lt;!--&lt;script&gt;" in dom  # shown as text
    shot = tmp_path / "twins.png"
    _browser(chromium, tmp_path, html_path.as_uri(), f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for colour in (other_in, other_edit, EDIT_COLOUR):  # the second shard's pictures and the first's edit
        assert int((np.abs(pixels - np.array(colour)).max(axis=2) <= 30).sum()) > 50 * 50, colour


class _Beacon(QuietHandler):
    """Stands for a remote host a hostile page would load from or report to; records every request."""

    hits: list[str] = []  # noqa: RUF012 - one list for the class, read by the test

    def do_GET(self):
        self.hits.append(self.path)
        body = b'document.documentElement.setAttribute("data-pwned-remote", "1");'
        self.reply(200, body, {"Content-Type": "text/javascript" if self.path.endswith(".js") else "text/css"})


@pytest.mark.slow
def test_the_report_runs_only_its_own_script_and_style_and_loads_nothing_in_headless_chromium(tmp_path, chromium):
    """Markup injected into the page (as if a value escaped its escaping) may not run script, inline or remote,
    nor load anything; the page's own script and style still work. The same page without its policy runs
    the payload: the test's payload is a real one."""
    from tests.local_http import serving

    out = make_run(tmp_path, n_ok=2, n_err=0)
    html_path = tmp_path / "report.html"
    write_report(str(out), str(html_path))
    page = html_path.read_text()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "http" not in csp
    assert page.index("Content-Security-Policy") < page.index("<style>")  # a policy applies to what follows it

    _Beacon.hits = []
    with serving(_Beacon) as base:
        payload = (
            '<script>document.documentElement.setAttribute("data-pwned", "inline")</script>'
            "<img src=\"x:\" onerror=\"document.documentElement.setAttribute('data-pwned-handler', '1')\">"
            f'<script src="{base}/x.js"></script><link rel="stylesheet" href="{base}/x.css">'
            f'<img src="{base}/beacon.png">'
        )
        hostile = page.replace('<main id="rows"></main>', payload + '<main id="rows"></main>')
        locked, unlocked = tmp_path / "locked.html", tmp_path / "unlocked.html"
        locked.write_text(hostile)
        unlocked.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", hostile))
        dom = _browser(chromium, tmp_path, locked.as_uri(), "--dump-dom").stdout
        shot = tmp_path / "locked.png"
        _browser(chromium, tmp_path, locked.as_uri(), f"--screenshot={shot}")
        locked_hits = list(_Beacon.hits)
        open_dom = _browser(chromium, tmp_path, unlocked.as_uri(), "--dump-dom").stdout

    assert len(re.findall(r'<section class="card', dom)) == 2, dom[-2000:]  # the page's own script ran
    for mark in ('data-pwned="inline"', 'data-pwned-handler="1"', 'data-pwned-remote="1"'):
        assert mark not in dom, mark  # the payload's own text is in the DOM; the attributes it would set are not
    assert locked_hits == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    header = int((np.abs(pixels - np.array((0x1D, 0x23, 0x30))).max(axis=2) <= 4).sum())
    assert header > 1300 * 20  # the page's own style applied: its dark header band
    assert 'data-pwned="inline"' in open_dom and 'data-pwned-handler="1"' in open_dom
    assert 'data-pwned-remote="1"' in open_dom and "/beacon.png" in _Beacon.hits
