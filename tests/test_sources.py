"""Input kinds without Ray: what --input names, how each kind resolves, manifest columns, image fetching."""

from __future__ import annotations

import http.server
import io
import json
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import rows, stages
from pipeline.inputs import input_patterns, resolve_sources
from pipeline.location import Location, Reach
from pipeline.sources import (
    SourceOptions,
    Unfetched,
    check_manifests,
    fetch,
    iter_source,
    pick_columns,
    safe_key,
    source_kind,
)
from tests.local_http import QuietHandler, serving


def _png(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_repeated_inputs_keep_spaces_and_a_single_string_splits_only_when_it_names_nothing(tmp_path):
    spaced = tmp_path / "my photos"
    spaced.mkdir()
    (spaced / "a.png").write_bytes(_png())
    assert input_patterns([str(spaced), "s3://b/x.tar"]) == [str(spaced), "s3://b/x.tar"]
    assert input_patterns(str(spaced)) == [str(spaced)]  # one path with a space, not two patterns
    assert input_patterns("s3://b/a.tar s3://b/b.tar") == ["s3://b/a.tar", "s3://b/b.tar"]  # the old form
    listing = tmp_path / "list.txt"
    listing.write_text(f"# inputs\n{spaced}\n\ns3://b/c.parquet\n")
    assert input_patterns([f"@{listing}", "x.csv"]) == [str(spaced), "s3://b/c.parquet", "x.csv"]
    with pytest.raises(FileNotFoundError, match="list file not found"):
        input_patterns(f"@{tmp_path}/nope.txt")


def test_a_folder_resolves_to_its_tars_else_its_manifests_else_itself_as_images(tmp_path):
    images, manifests, shards = (tmp_path / n for n in ("images", "manifests", "shards"))
    for d in (images, manifests, shards):
        d.mkdir()
        (d / "x.png").write_bytes(_png())
    (manifests / "b.csv").write_text("url,caption\nx.png,hi\n")
    (manifests / "a.parquet").write_bytes(b"")
    (shards / "s.tar").write_bytes(b"")
    (shards / "m.csv").write_text("")
    assert resolve_sources([str(shards)]) == [f"{shards}/s.tar"]
    assert resolve_sources([str(manifests)]) == [f"{manifests}/a.parquet", f"{manifests}/b.csv"]
    assert resolve_sources([str(images)]) == [f"{images}/"] and source_kind(f"{images}/") == "folder"
    with pytest.raises(ValueError, match="give their folder"):
        resolve_sources([f"{images}/*.png"])
    with pytest.raises(FileNotFoundError, match="1 input"):
        resolve_sources([str(images), f"{tmp_path}/none"])


def test_folder_rows_are_images_in_path_order_with_their_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.png").write_bytes(_png(1))
    (tmp_path / "b.txt").write_text("add snow")
    (tmp_path / "a.v2.jpg").write_bytes(_png(2))
    (tmp_path / "a.v2.json").write_text('{"instruction": "x"}')
    (tmp_path / "sub" / "c.webp").write_bytes(_png(3))
    (tmp_path / "orphan.txt").write_text("no image")
    (tmp_path / ".hidden.png").write_bytes(_png(4))
    samples = list(iter_source(Location(f"{tmp_path}/"), SourceOptions()))
    assert [(k, sorted(f)) for k, f in samples] == [
        ("a_v2", ["json", "png"]),
        ("b", ["png", "txt"]),
        ("sub/c", ["png"]),
    ]


def test_manifest_columns_default_explicit_and_missing(tmp_path):
    url = str(tmp_path / "m.parquet")
    assert pick_columns(url, ["url", "caption", "key"], SourceOptions()).image == "url"
    cols = pick_columns(url, ["image", "instruction", "caption"], SourceOptions())
    assert (cols.image, cols.instruction, cols.key) == ("image", "instruction", None)
    with pytest.raises(
        ValueError,
        match=r"no image column: looked for 'url', 'image'; its columns: \['path'\]\. "
        r"Pass --image-column NAME",
    ):
        pick_columns(url, ["path"], SourceOptions())
    with pytest.raises(ValueError, match="no column 'img' \\(--image-column\\)"):
        pick_columns(url, ["url"], SourceOptions(image_column="img"))
    (tmp_path / "m.csv").write_text("url,sku\nx.png,1\n")
    with pytest.raises(ValueError, match="no instruction column.*--instruction-column"):
        check_manifests([str(tmp_path / "m.csv")], Reach(), SourceOptions(), need_instruction=True)
    check_manifests([str(tmp_path / "m.csv")], Reach(), SourceOptions(), need_instruction=False)  # --instruction


def test_manifest_rows_carry_other_columns_as_json_and_fail_per_row(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    table = pa.table(
        {
            "image": [
                {"bytes": _png(9), "path": None},
                {"bytes": None, "path": "ok.png"},
                {"bytes": None, "path": None},
            ],
            "instruction": ["a", "b", "c"],
            "seed": [5, 6, 7],
            "key": ["k.1", None, "k3"],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    samples = list(iter_source(Location(str(tmp_path / "m.parquet")), SourceOptions()))
    assert [k for k, _ in samples] == ["k_1", "000000001", "k3"]
    assert samples[0][1]["png"] == _png(9) and samples[1][1]["png"] == _png()
    assert json.loads(samples[1][1]["json"]) == {"key": None, "seed": 6} and samples[1][1]["txt"] == b"b"
    assert isinstance(samples[2][1], Unfetched) and "column 'image' is empty" in samples[2][1].reason
    clone = pickle.loads(pickle.dumps(samples[2][1]))  # travels between Ray tasks with its reason
    assert isinstance(clone, Unfetched) and clone.reason == samples[2][1].reason


def test_unreadable_image_is_an_error_row_of_stage_fetch(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"url": "missing.png", "instruction": "x"}\n\n[1]\n')
    units = list(
        stages.read_shard(
            {"shard": str(tmp_path / "m.jsonl"), "committed": "{}"}, stages.ReadSettings(4, False, Reach())
        )
    )
    samples = rows.unpack(units[0]["payload"])
    assert [(s["row_index"], s["status"], s["error_stage"]) for s in samples] == [
        (0, "error", "fetch"),
        (1, "error", "fetch"),
    ]
    assert f"cannot fetch {tmp_path}/missing.png (column 'url'): not found" in samples[0]["error"]
    assert samples[1]["error"] == "line 3 is not a JSON object"


class _Flaky(QuietHandler):
    """Answers 503 to the first two requests for a path, then the image; /slow never answers in time."""

    hits: dict[str, int] = {}

    def do_GET(self):
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/flaky.png" and n <= 2 or self.path == "/slow":
            self.reply(503)
        else:
            self.reply(200, _png(7))


@pytest.fixture
def flaky_server():
    with serving(_Flaky) as url:
        yield url


def test_http_fetch_retries_transient_errors_and_gives_up_after_the_timeout(flaky_server):
    local = SourceOptions(allow_private_urls=True)  # the test server is on loopback
    assert fetch(Location(f"{flaky_server}/flaky.png"), local) == _png(7)
    assert _Flaky.hits["/flaky.png"] == 3
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        fetch(
            Location(f"{flaky_server}/slow"),
            SourceOptions(fetch_timeout_s=0.5, fetch_retries=1, allow_private_urls=True),
        )
    assert time.monotonic() - t0 < 2.5  # two attempts of 0.5 s plus a backoff, not the server's 3 s each


def test_safe_key_keeps_folders_and_replaces_dots_in_the_name():
    assert safe_key("dir.v1/img.001") == "dir.v1/img_001"
    assert safe_key("plain") == "plain"


def test_repeated_input_flags_reach_the_config_as_separate_patterns():
    from jobs import cli
    from jobs.edit import config_from_args

    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "edit",
            "--input",
            "/data/my photos",
            "--input",
            "@list.txt",
            "--output",
            "o",
            "--image-column",
            "img",
            "--concurrency",
            "2",
            "--num-gpus",
            "0.5",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.io.input == ("/data/my photos", "@list.txt")
    assert (cfg.source.image_column, cfg.compute.concurrency, cfg.compute.num_gpus) == ("img", 2, 0.5)
    one = config_from_args(parser.parse_args(["edit", "--input", "s3://b/a.tar s3://b/b.tar", "--output", "o"]))
    assert one.io.input == "s3://b/a.tar s3://b/b.tar"  # one flag: the old single-string meaning


def test_a_manifest_served_over_http_resolves_relative_image_paths_against_its_own_url(tmp_path):
    import functools

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png(3))
    (tmp_path / "rows.jsonl").write_text('{"url": "imgs/a.png", "caption": "x"}\n{"url": "imgs/b.png"}\n')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with serving(functools.partial(Quiet, directory=str(tmp_path))) as base:
        url = f"{base}/rows.jsonl"
        assert resolve_sources([url]) == [url]
        check_manifests([url], Reach(), SourceOptions(), need_instruction=True)
        samples = list(iter_source(Location(url), SourceOptions(allow_private_urls=True)))  # served on loopback
    assert samples[0][1]["png"] == _png(3) and samples[0][1]["txt"] == b"x"
    assert isinstance(samples[1][1], Unfetched) and f"{url.rsplit('/', 1)[0]}/imgs/b.png" in samples[1][1].reason
