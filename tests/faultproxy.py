"""A fault-injecting HTTP proxy for an S3 endpoint: the failures object stores really produce, on demand.

    with FaultProxy(s3.url, FaultPlan(error_500=0.1, slow_down=0.1, drop=0.05, seed=7)) as proxy:
        run_job(endpoint_url=proxy.url)          # clients talk to the proxy instead of the endpoint
        proxy.stats.faults                      # what was injected, by kind

It listens on 127.0.0.1 (a free port) and forwards every request to the upstream endpoint unchanged (Host
header included, so S3 signatures and path-style bucket names still hold). For a configurable fraction of
requests it instead answers

- `500 InternalError` (an S3 error document), or
- `503 SlowDown` (S3's throttling answer, which SDKs retry with back-off), or
- nothing: the connection is closed after the request was read (`drop`) or half-way through the response
  body (`cut`), as a load balancer restart or a network blip does;
- or late: requests under `slow_prefix` wait `slow_s` seconds first (a slow store; also lets a test act
  while a read is in flight). `stats.log` lists every request, so a test can wait for one to arrive.

Deterministic: whether a request is faulted depends only on the seed, the method, the path and how many times
that same (method, path) was seen before, not on thread timing. So the same client requests give the same
faults in any interleaving, and a retry of a faulted request is a new draw.

Bounded: at most `max_per_request` faults for the same (method, path) in a row (a retrying client always gets
through) and at most `max_faults` in all. Writes can also be refused outright (`deny_writes`: 403
AccessDenied for PUT/POST/DELETE under a path prefix, from the start or switched on while serving), which is
how a read-only output store answers.

The server stops itself after `ttl_s` seconds even if nobody calls stop(), so a failed test cannot leave it
running.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("error_500", "slow_down", "drop", "cut")
WRITE_METHODS = ("PUT", "POST", "DELETE")

_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<Resource>{resource}</Resource><RequestId>faultproxy</RequestId></Error>"
)
_ANSWERS = {
    "error_500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
    "deny": (403, "AccessDenied", "Access Denied"),
}


@dataclass(frozen=True)
class FaultPlan:
    error_500: float = 0.0  # fraction of requests answered 500 InternalError
    slow_down: float = 0.0  # fraction answered 503 SlowDown
    drop: float = 0.0  # fraction whose connection is closed before any response byte
    cut: float = 0.0  # fraction whose response is cut half-way through the body (GETs with a body only)
    seed: int = 0
    max_per_request: int = 2  # faults in a row for one (method, path): a client with 3+ attempts gets through
    max_faults: int = 10_000  # faults in all
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE")  # which requests may be faulted
    path_prefix: str = ""  # only requests whose path starts with this ("/bucket/out") may be faulted
    from_nth: int = 0  # the first `from_nth` requests of each (method, path) pass: an outage that starts mid-read
    deny_writes: str | None = None  # 403 for every write whose path starts with this prefix (not counted above)
    slow_prefix: str | None = None  # requests under this path prefix are answered `slow_s` late (slow reads)
    slow_s: float = 0.0
    # every kind with a non-zero fraction is injected at least once: the first eligible requests that can take
    # a kind not yet seen get it (a cut needs a GET). Paths hold per-session bucket names, so the hashed draws
    # alone could miss a rare kind in a short job, and a test asserting "all four were absorbed" would flake.
    ensure_each: bool = False

    def __post_init__(self):
        total = self.error_500 + self.slow_down + self.drop + self.cut
        if not 0 <= total <= 1:
            raise ValueError(f"fault fractions must add up to at most 1, got {total}")


@dataclass
class Stats:
    requests: int = 0
    forwarded: int = 0
    faults: Counter = field(default_factory=Counter)  # kind -> count
    denied: int = 0
    faulted: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, method, path)
    upstream_errors: int = 0  # the upstream itself failed (not injected)
    log: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request, in arrival order


def _draw(seed: int, method: str, path: str, nth: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, method, path, nth): no shared RNG, no timing dependence."""
    digest = hashlib.blake2b(f"{seed}\0{method}\0{path}\0{nth}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections as they do with real S3
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - silence the per-request stderr lines
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer_error(self, kind: str, path: str) -> None:
        status, code, message = _ANSWERS[kind]
        body = _ERROR_XML.format(code=code, message=message, resource=path).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        body = self._read_body()
        path = urllib.parse.urlsplit(self.path).path
        kind = self.server.decide(self.command, path, body)
        slow_prefix, slow_s = self.server.slow
        if slow_prefix is not None and path.startswith(slow_prefix):
            time.sleep(slow_s)
        if kind in ("error_500", "slow_down", "deny"):
            return self._answer_error(kind, path)
        if kind == "drop":
            return self._drop()
        try:
            status, reason, headers, data = self.server.forward(self.command, self.path, self.headers, body)
        except (OSError, http.client.HTTPException):
            with self.server.lock:
                self.server.stats.upstream_errors += 1
            return self._drop()
        self.send_response(status, reason)
        head = self.command == "HEAD"  # a HEAD answer has no body but the length of the object
        for name, value in headers:
            if name.lower() in ("transfer-encoding", "connection", "server", "date"):
                continue
            if name.lower() == "content-length" and not head:
                continue
            self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if kind == "cut" and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self._drop()
        self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str, plan: FaultPlan):
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port or 80)
        self.plan = plan
        self.stats = Stats()
        self.lock = threading.Lock()
        self.seen: Counter = Counter()  # (method, path) -> requests so far
        self.in_a_row: Counter = Counter()  # (method, path) -> faults since its last success
        self.local = threading.local()  # one upstream connection per handler thread
        self.deny_writes = plan.deny_writes  # changeable while serving (FaultProxy.set_deny_writes)
        self.slow = (plan.slow_prefix, plan.slow_s)  # changeable while serving (FaultProxy.set_slow)

    def decide(self, method: str, path: str, body: bytes) -> str | None:
        """None (forward) or the fault kind for this request."""
        p = self.plan
        with self.lock:
            self.stats.requests += 1
            if len(self.stats.log) < 100_000:
                self.stats.log.append((method, path))
            if self.deny_writes is not None and method in WRITE_METHODS and path.startswith(self.deny_writes):
                self.stats.denied += 1
                return "deny"
            ident = (method, path)
            nth = self.seen[ident]
            self.seen[ident] += 1
            eligible = (
                method in p.methods
                and path.startswith(p.path_prefix)
                and nth >= p.from_nth
                and self.in_a_row[ident] < p.max_per_request
                and sum(self.stats.faults.values()) < p.max_faults
            )
            kind = None
            if eligible and p.ensure_each:
                kind = next(
                    (
                        name
                        for name in FAULTS
                        if getattr(p, name) > 0 and not self.stats.faults[name] and (name != "cut" or method == "GET")
                    ),
                    None,
                )
            if eligible and kind is None:
                x = _draw(p.seed, method, path, nth)
                edge = 0.0
                for name in FAULTS:
                    edge += getattr(p, name)
                    if x < edge:
                        kind = name
                        break
                if kind == "cut" and method != "GET":
                    kind = None  # only a body can be cut; other requests pass
            if kind is None:
                self.in_a_row[ident] = 0
                self.stats.forwarded += 1
            else:
                self.in_a_row[ident] += 1
                self.stats.faults[kind] += 1
                self.stats.faulted.append((kind, method, path))
                if kind == "cut":
                    self.stats.forwarded += 1  # the upstream does see it
            return kind

    def forward(self, method: str, target: str, headers, body: bytes):
        conn = getattr(self.local, "conn", None)
        for attempt in range(2):  # a kept-alive upstream connection may have been closed meanwhile
            if conn is None:
                conn = http.client.HTTPConnection(*self.upstream, timeout=60)
                self.local.conn = conn
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers.items():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection", "expect"):
                        conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class FaultProxy:
    """The proxy as a context manager (or start()/stop()); `url` is what clients use as their endpoint."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None, ttl_s: float = 600.0):
        self.plan = plan or FaultPlan()
        self._server = _Server(upstream, self.plan)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="faultproxy", daemon=True
        )
        self._timer = threading.Timer(ttl_s, self.stop)
        self._timer.daemon = True
        self._closed = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def stats(self) -> Stats:
        return self._server.stats

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._closed.is_set()

    def set_deny_writes(self, prefix: str | None) -> None:
        """From now on answer 403 to writes under `prefix` (None: let them through again)."""
        with self._server.lock:
            self._server.deny_writes = prefix

    def set_slow(self, prefix: str | None, seconds: float = 0.0) -> None:
        """From now on answer requests under `prefix` `seconds` late (None: at once again)."""
        self._server.slow = (prefix, seconds)

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._stop_lock:  # the timer and the owner may both call it
            if self._closed.is_set():
                return
            self._timer.cancel()
            if self._thread.is_alive():
                self._server.shutdown()  # waits for serve_forever to return; only valid once it runs
            self._server.server_close()  # the port refuses connections from here on
            self._closed.set()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
