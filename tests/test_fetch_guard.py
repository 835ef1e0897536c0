"""The fetch guard: manifest rows' HTTP(S) URLs cannot reach loopback, link-local, private or other non-public
addresses (after DNS, on every redirect hop) without --allow-private-urls; a remote manifest cannot name local
files; one image has a total time limit.

Names resolve through a stub resolver and every connection goes through `http_fetch._connect`, which these
tests wrap: the only address ever contacted is the loopback test server's.
"""

from __future__ import annotations

import functools
import http.server
import io
import ipaddress
import json
import time

import numpy as np
import pytest
from PIL import Image

from pipeline import http_fetch, rows, stages
from pipeline.http_fetch import AddressPolicy, URLRefused, address_rule
from pipeline.location import Location, Reach
from pipeline.sources import (
    SourceOptions,
    Unfetched,
    fetch,
    iter_source,
    resolve_row_path,
)
from tests.local_http import QuietHandler, serving


def _png(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def connections(monkeypatch):
    """Every (address, port) a fetch connects to, in order."""
    seen: list[tuple[str, int]] = []
    real = http_fetch._connect

    def spy(address, timeout):
        seen.append(address)
        return real(address, timeout)

    monkeypatch.setattr(http_fetch, "_connect", spy)
    return seen


def _stub(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


ONE_TRY = dict(fetch_retries=0, fetch_timeout_s=60.0)  # generous: a loaded test machine is slow, not the server

REFUSED = [  # (address, rule)
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("0.0.0.0", "non-public"),
    ("100.64.0.1", "non-public"),
    ("224.0.0.251", "non-public"),
    ("240.0.0.1", "non-public"),
    ("255.255.255.255", "non-public"),
    ("::", "non-public"),
    ("ff02::1", "non-public"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: the IPv4 it carries
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
]


@pytest.mark.parametrize("address,rule", REFUSED, ids=[a for a, _ in REFUSED])
def test_a_name_resolving_to_a_non_public_address_is_refused_before_any_connection(address, rule, connections):
    resolve = _stub({"images.example": [address]})
    with pytest.raises(URLRefused) as e:
        fetch(Location("http://images.example/a.png"), SourceOptions(**ONE_TRY), resolver=resolve)
    message = str(e.value)
    assert f"images.example resolves to {address}, which is a {rule} address" in message
    assert "--allow-private-urls" in message and "\n" not in message
    assert connections == []


@pytest.mark.parametrize(
    "url,rule",
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "link-local"),
        ("http://10.0.0.5:8080/x.png", "private"),
        ("http://[::1]:9/x.png", "loopback"),
        ("https://[fd00::5]/x.png", "private"),
    ],
)
def test_an_ip_literal_is_checked_as_it_is_without_resolving(url, rule, connections):
    def no_dns(host, port):
        raise AssertionError(f"resolved {host}")

    with pytest.raises(URLRefused, match=f"is a {rule} address"):
        fetch(Location(url), SourceOptions(**ONE_TRY), resolver=no_dns)
    assert connections == []


def test_one_non_public_address_among_public_ones_refuses_the_name(connections):
    resolve = _stub({"mixed.example": ["93.184.216.34", "10.9.9.9"]})
    with pytest.raises(URLRefused, match="10.9.9.9, which is a private address"):
        fetch(Location("https://mixed.example/a.png"), SourceOptions(**ONE_TRY), resolver=resolve)
    assert connections == []


def test_public_addresses_pass_the_rules():
    for address in ("93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "2a00:1450:4001::200e"):
        assert address_rule(ipaddress.ip_address(address)) is None, address
    AddressPolicy().check("cdn.example", "93.184.216.34")  # no exception


class _Redirector(QuietHandler):
    """/img.png is the image; /to-X answers 302 to the target in TARGETS; every path asked for is recorded."""

    TARGETS = {
        "/to-metadata": "http://metadata.example/latest/meta-data/",
        "/to-private-literal": "http://10.0.0.7:8080/x.png",
        "/to-file": "file:///etc/passwd",
        "/to-local": "/img.png",
        "/to-loop": "/to-loop",
    }
    paths: list[str] = []
    hosts: list[str] = []

    def do_GET(self):
        self.paths.append(self.path)
        self.hosts.append(self.headers["Host"])
        if self.path in self.TARGETS:
            self.reply(302, headers={"Location": self.TARGETS[self.path]})
        else:
            self.reply(200, _png(5))


@pytest.fixture
def redirector():
    _Redirector.paths, _Redirector.hosts = [], []
    with serving(_Redirector) as url:
        yield url


@pytest.mark.parametrize(
    "path,message",
    [
        ("/to-metadata", "metadata.example resolves to 169.254.169.254, which is a link-local address"),
        ("/to-private-literal", "10.0.0.7 is a private address"),
        ("/to-file", "only http(s) URLs are followed"),
    ],
)
def test_every_redirect_hop_is_checked(path, message, redirector, connections):
    # the server itself is allowed by network, so the first hop goes through and only the redirect is judged
    options = SourceOptions(**ONE_TRY, allowed_networks=("127.0.0.1/32",))
    resolve = _stub({"metadata.example": ["169.254.169.254"]})
    with pytest.raises(URLRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        fetch(Location(f"{redirector}{path}"), options, resolver=resolve)
    assert _Redirector.paths == [path]
    assert {a for a, _ in connections} == {"127.0.0.1"}


def test_allowed_redirects_are_followed_and_a_loop_ends(redirector, connections):
    options = SourceOptions(**ONE_TRY, allowed_networks=("127.0.0.1/32",))
    assert fetch(Location(f"{redirector}/to-local"), options) == _png(5)
    assert _Redirector.paths == ["/to-local", "/img.png"]
    with pytest.raises(OSError, match="more than 5 redirects"):
        fetch(Location(f"{redirector}/to-loop"), options)
    assert {a for a, _ in connections} == {"127.0.0.1"}


def test_the_opt_in_reaches_private_addresses_and_connects_to_the_checked_one(redirector, connections):
    port = int(redirector.rsplit(":", 1)[1])
    resolve = _stub({"images.internal": ["127.0.0.1"]})
    with pytest.raises(URLRefused):
        fetch(Location(f"http://images.internal:{port}/img.png"), SourceOptions(**ONE_TRY), resolver=resolve)
    assert connections == []
    for options in (
        SourceOptions(**ONE_TRY, allow_private_urls=True),
        SourceOptions(**ONE_TRY, allowed_networks=("127.0.0.0/8",)),
    ):
        assert fetch(Location(f"http://images.internal:{port}/img.png"), options, resolver=resolve) == _png(5)
    assert connections == [("127.0.0.1", port)] * 2
    assert _Redirector.hosts == [f"images.internal:{port}"] * 2  # the URL's host, not the address


class _Trickle(QuietHandler):
    """Headers at once, then one byte every 0.1 s of a 10,000-byte body: each read well within any timeout."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "10000")
        self.end_headers()
        try:
            for _ in range(10000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up, as it should

    def log_message(self, *args):
        pass


def test_a_trickling_server_is_cut_at_the_request_limit_and_the_image_deadline():
    with serving(_Trickle) as url:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="--fetch-timeout"):
            slow = SourceOptions(fetch_timeout_s=1.0, fetch_retries=0, allow_private_urls=True)
            fetch(Location(f"{url}/slow.png"), slow)
        assert time.monotonic() - t0 < 10.0  # not the 1,000 s the body would take (slack for a loaded machine)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="--fetch-deadline"):
            fetch(
                Location(f"{url}/slow.png"),
                SourceOptions(fetch_timeout_s=1.0, fetch_retries=60, fetch_deadline_s=2.5, allow_private_urls=True),
            )
        assert time.monotonic() - t0 < 12.0  # 60 retries of 1 s would take a minute and more


def test_paths_of_a_remote_manifest_resolve_against_its_own_location_only():
    s3 = "s3://b/sets/rows.csv"
    assert resolve_row_path("imgs/a.png", s3, "url") == ("s3://b/sets/imgs/a.png", None)
    assert resolve_row_path("../other/a.png", s3, "url") == ("s3://b/other/a.png", None)
    assert resolve_row_path("/b2/a.png", s3, "url") == ("s3://b2/a.png", None)  # the store's absolute path
    assert resolve_row_path("https://cdn.example/a.png", s3, "url") == ("https://cdn.example/a.png", None)
    web = "https://data.example/sets/rows.jsonl"
    assert resolve_row_path("imgs/a.png", web, "url") == ("https://data.example/sets/imgs/a.png", None)
    assert resolve_row_path("/etc/passwd", web, "url") == ("https://data.example/etc/passwd", None)
    assert resolve_row_path("../../../etc/passwd", web, "url") == ("https://data.example/etc/passwd", None)
    for manifest, value in [
        (s3, "file:///etc/passwd"),
        (s3, "../../../etc/passwd"),
        (web, "file:///etc/passwd"),
        (web, "s3://private-bucket/x.png"),
        (s3, "gs://b/x.png"),
        (web, "local:///x"),
    ]:
        url, error = resolve_row_path(value, manifest, "url")
        assert url is None and "refused" in error and "never a local file" in error, (manifest, value)
    # the user's own local manifest may name anything, as before
    assert resolve_row_path("/data/a.png", "/home/u/rows.csv", "url") == ("/data/a.png", None)
    assert resolve_row_path("a.png", "/home/u/rows.csv", "url") == ("/home/u/a.png", None)


def test_a_remote_manifest_naming_a_local_file_gets_an_error_row_and_the_file_is_never_read(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png(9))
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.png").write_bytes(_png(3))
    (site / "rows.jsonl").write_text(
        "\n".join(json.dumps({"url": u, "instruction": "x"}) for u in ("a.png", f"file://{secret}", str(secret))) + "\n"
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with serving(functools.partial(Quiet, directory=str(site))) as base:
        samples = list(iter_source(Location(f"{base}/rows.jsonl"), SourceOptions(**ONE_TRY, allow_private_urls=True)))
    assert samples[0][1]["png"] == _png(3)
    assert isinstance(samples[1][1], Unfetched) and "refused" in samples[1][1].reason
    # an absolute path is a path on the manifest's host: asked of the web server, which has no such file
    assert isinstance(samples[2][1], Unfetched) and samples[2][1].reason.startswith(f"cannot fetch {base}{secret}")
    assert all(_png(9) not in v for _, fields in samples for v in fields.values() if isinstance(v, bytes))


def test_refused_urls_are_error_rows_of_stage_fetch_naming_the_rule_and_the_flag(tmp_path, redirector):
    port = int(redirector.rsplit(":", 1)[1])
    (tmp_path / "own.png").write_bytes(_png(1))
    urls = [
        "own.png",
        f"http://127.0.0.1:{port}/img.png",
        f"http://localhost:{port}/img.png",
        "http://169.254.169.254/latest/meta-data/",
        f"http://127.0.0.1:{port}/to-metadata",
    ]
    for name, listed in (("all", urls), ("loopback", urls[:3])):  # the opted-in run never follows the others
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"url": u, "instruction": "x"}) + "\n" for u in listed)
        )

    def read(name: str, options: SourceOptions) -> list[dict]:
        settings = stages.ReadSettings(8, False, Reach(), source=options)
        units = list(stages.read_shard({"shard": str(tmp_path / f"{name}.jsonl"), "committed": "{}"}, settings))
        return rows.unpack(units[0]["payload"])

    refused = read("all", SourceOptions(**ONE_TRY))
    assert [(r["status"], r.get("error_stage")) for r in refused] == [(rows.PENDING, None)] + [("error", "fetch")] * 4
    assert "127.0.0.1 is a loopback address" in refused[1]["error"]
    assert "localhost resolves to" in refused[2]["error"] and "loopback" in refused[2]["error"]
    assert "169.254.169.254 is a link-local address" in refused[3]["error"]
    for r in refused[1:]:
        assert r["error"].startswith(f"cannot fetch {urls[refused.index(r)]} (column 'url'): refused: ")
        assert "pass --allow-private-urls" in r["error"] and "\n" not in r["error"]
    allowed = read("loopback", SourceOptions(**ONE_TRY, allow_private_urls=True))
    assert [r["status"] for r in allowed] == [rows.PENDING] * 3
    assert _Redirector.paths.count("/img.png") == 2  # only the opted-in run ever reached the server


def test_the_flag_takes_all_or_some_networks_and_refuses_a_bad_one(capsys):
    from jobs import cli
    from jobs.edit import config_from_args

    parser = cli.build_parser()
    base = ["edit", "--input", "m.jsonl", "--output", "o"]
    assert config_from_args(parser.parse_args(base)).source.allow_private_urls is False
    everything = config_from_args(parser.parse_args([*base, "--allow-private-urls"])).source
    assert everything.allow_private_urls and everything.allowed_networks == ()
    some = config_from_args(parser.parse_args([*base, "--allow-private-urls", "10.2.0.0/16,127.0.0.1"])).source
    assert not some.allow_private_urls and some.allowed_networks == ("10.2.0.0/16", "127.0.0.1")
    with pytest.raises(SystemExit) as e:
        parser.parse_args([*base, "--allow-private-urls", "10.2.0.0/33"])
    assert e.value.code == 2 and "'10.2.0.0/33' is not a network" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--fetch-deadline", "0"])
