"""A local HTTP server for the tests that fetch over HTTP: started on a free port, stopped on exit."""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager
from typing import Iterator


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing (the test reads what it records) and answers in one call."""

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler) -> Iterator[str]:
    """Serves `handler` (a request handler class or partial) on 127.0.0.1; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
