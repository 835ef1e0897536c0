"""HTTP(S) fetches of manifest rows, guarded against reaching addresses a dataset must not point us at.

A manifest from an untrusted dataset names its images by URL. Fetched blindly, such a URL reaches whatever the
worker can reach: the cloud metadata address (169.254.169.254, which hands out credentials), services on the
cluster's private network, the worker's own loopback. So every fetch here

1. resolves the host once and refuses it if *any* of its addresses is not public (loopback, link-local,
   private, and the other special-purpose ranges: see `address_rule`), unless the run opted in;
2. connects to exactly the addresses it checked (the name is not resolved again by the HTTP library, so a DNS
   answer that changes between check and connect cannot slip a private address in);
3. follows redirects itself, one hop at a time, each hop checked like the first and limited to http(s);
4. keeps a hard total time per request (a watchdog shuts the socket), not only a per-read timeout: a server
   trickling a byte at a time within the read timeout would otherwise hold a worker for ever.

The standard library's http.client is used rather than fsspec's aiohttp client because aiohttp resolves and
redirects internally (an IP literal in a redirect never reaches a custom resolver), so neither 2 nor 3 could
be enforced from outside it.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import posixpath
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

Resolver = Callable[[str, int], list[str]]  # (host, port) -> IP addresses as strings

MAX_REDIRECTS = 5
OPT_IN_FLAG = "--allow-private-urls"

# Named rules first (the message says which one a URL broke); anything else that is not globally routable is
# refused as "non-public" (unspecified, multicast, shared/CGNAT 100.64/10, documentation, benchmarking, reserved).
_NAMED_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
)
_NAMED = tuple((name, tuple(ipaddress.ip_network(n) for n in nets)) for name, nets in _NAMED_RULES)


class URLRefused(PermissionError):
    """A row's URL (or a redirect it led to) points where manifest rows may not go; never retried."""


class HTTPStatusError(OSError):
    """A non-success HTTP answer; `status` lets the caller decide whether a retry could help."""

    def __init__(self, status: int, reason: str, url: str):
        super().__init__(f"HTTP {status} {reason} from {url}")
        self.status = status


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a row's URL may reach. `allow_private`: every address (`--allow-private-urls`);
    `allowed_networks`: these non-public networks only (`--allow-private-urls 10.2.0.0/16,...`, an internal
    image host)."""

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()

    def check(self, host: str, address: str) -> None:
        """Raises URLRefused naming the rule and the flag when `address` (resolved from `host`) is refused."""
        if self.allow_private:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scoped IPv6 address carries %zone
        rule = address_rule(ip)
        if rule is None or any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks):
            return
        shown = host if host == address else f"{host} resolves to {address}, which"
        raise URLRefused(
            f"refused: {shown} is a {rule} address; manifest URLs may not reach loopback, "
            f"link-local, private or other non-public addresses (pass {OPT_IN_FLAG} to allow "
            f"them, or {OPT_IN_FLAG} CIDR[,CIDR] for some networks)"
        )


def address_rule(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The rule that refuses `ip` ("loopback", "link-local", "private", "non-public"), or None if it is public.
    IPv4 written inside IPv6 (::ffff:10.0.0.1, NAT64 64:ff9b::/96, 6to4 2002::/16) is judged as the IPv4 it
    carries: each of those reaches that IPv4 address on a dual-stack host."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_rule(embedded)
    for name, nets in _NAMED:
        if any(ip.version == n.version and ip in n for n in nets):
            return name
    return None if ip.is_global and not ip.is_multicast else "non-public"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (IPv4 and IPv6), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _connect(address: tuple[str, int], timeout: float) -> socket.socket:
    """The one place a fetch opens a connection (tests wrap it to see every address contacted)."""
    return socket.create_connection(address, timeout=timeout)


def get(url: str, policy: AddressPolicy, timeout_s: float, resolver: Resolver | None = None) -> bytes:
    """The body of `url` after at most MAX_REDIRECTS checked redirects, all within `timeout_s` in total.
    Raises URLRefused, HTTPStatusError (FileNotFoundError for 404/410), TimeoutError or an OSError."""
    resolver = resolver or system_resolver
    deadline = time.monotonic() + timeout_s
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise URLRefused(f"refused: a redirect to {url!r}: only http(s) URLs are followed")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = _resolve(parts.hostname, port, resolver)
        for address in addresses:  # all of them, before any connection: a name with one private address is out
            policy.check(parts.hostname, address)
        status, reason, location, body = _request(parts, port, addresses, deadline, timeout_s)
        if status in (301, 302, 303, 307, 308) and location:
            url = urljoin(url, location)
            continue
        if status in (404, 410):
            raise FileNotFoundError(url)
        if not 200 <= status < 300:
            raise HTTPStatusError(status, reason, url)
        return body
    raise HTTPStatusError(310, f"more than {MAX_REDIRECTS} redirects", url)


def _resolve(host: str, port: int, resolver: Resolver) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]  # an IP literal: checked as it is
    except ValueError:
        pass
    try:
        addresses = resolver(host, port)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e.strerror or e}") from None
    if not addresses:
        raise OSError(f"cannot resolve {host}: no addresses")
    return addresses


def _request(
    parts, port: int, addresses: list[str], deadline: float, read_timeout_s: float
) -> tuple[int, str, str | None, bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no answer within {read_timeout_s:g} s (--fetch-timeout)")
    conn = _Connection(parts.scheme, parts.hostname, port, addresses, min(read_timeout_s, remaining))
    expired = threading.Event()

    def cut() -> None:  # the total limit: a trickle of bytes, each within the read timeout, still ends here
        expired.set()
        conn.abort()

    watchdog = threading.Timer(remaining, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.request("GET", target, headers={"Accept-Encoding": "identity", "User-Agent": "mgie-batch"})
        response = conn.getresponse()
        body = b"" if 300 <= response.status < 400 else response.read()
        return response.status, response.reason, response.getheader("Location"), body
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError(f"no whole answer within {read_timeout_s:g} s (--fetch-timeout)") from None
        raise
    finally:
        watchdog.cancel()
        conn.close()


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One verifying context per process: building one reads the system's CA bundle, far too slow per image."""
    return ssl.create_default_context()


class _Connection(http.client.HTTPSConnection):
    """An HTTP or HTTPS connection to one of the checked `addresses`; the Host header and the TLS name and
    certificate check use the URL's host name, as a browser's would."""

    def __init__(self, scheme: str, host: str, port: int, addresses: list[str], timeout: float):
        super().__init__(host, port, timeout=timeout, context=_tls_context())
        self._tls = scheme == "https"
        self.default_port = 443 if self._tls else 80  # the Host header names a port only when it is not this
        self._addresses = addresses
        self._lock = threading.Lock()

    def connect(self) -> None:
        error: OSError | None = None
        for address in self._addresses:
            try:
                sock = _connect((address, self.port), self.timeout)
                break
            except OSError as e:
                error = e
        else:
            raise error or OSError(f"cannot connect to {self.host}")
        with self._lock:
            self._raw = sock  # kept: http.client drops `self.sock` once it knows the server will close
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host) if self._tls else sock

    def abort(self) -> None:
        with self._lock:
            raw = getattr(self, "_raw", None)
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once; the response then fails
            except OSError:
                pass


REMOTE_ROW_SCHEMES = ("http", "https")  # what any remote manifest's rows may name besides its own store


def resolve_row_path(value: str, manifest: str, column: str) -> tuple[str | None, str | None]:
    """(URL, error) of a row's image reference. A local manifest is the user's own file: its rows may name
    anything. A remote (HTTP, S3, ...) manifest may come from an untrusted dataset: its paths resolve against
    its own location only (HTTP: as a browser resolves a link; S3: inside its bucket, `/x` = the store's
    absolute path), and its URLs must be http(s) or on its own store; a local file (`file://`, `/etc/...`
    read by the worker) is refused."""
    from pipeline.storage import is_local

    if is_local(manifest):
        if "://" in value or value.startswith("/"):
            return value, None
        return posixpath.join(manifest.rsplit("/", 1)[0], value), None
    scheme = manifest.split("://", 1)[0].lower()
    refused = (
        f"column {column!r} names {value!r}: refused, a remote manifest's rows may name http(s) URLs "
        f"and paths on its own store ({scheme}://) only, never a local file"
    )
    if "://" in value:
        if value.split("://", 1)[0].lower() not in (*REMOTE_ROW_SCHEMES, scheme):
            return None, refused
        return value, None
    if scheme in REMOTE_ROW_SCHEMES:
        return urljoin(manifest, value), None  # stays on the manifest's host for any path, `../` included
    if value.startswith("/"):
        path = posixpath.normpath(value.lstrip("/"))  # an absolute path on the manifest's own store
    else:
        path = posixpath.normpath(posixpath.join(manifest.split("://", 1)[1].rsplit("/", 1)[0], value))
    if path.startswith("..") or path in (".", ""):
        return None, refused
    return f"{scheme}://{path}", None
