"""Serves a local S3 endpoint (`pipeline.dev.local_s3`: moto's server, real HTTP on 127.0.0.1) for trying the
cluster flow on one machine. Not for production data: it keeps everything in memory.

    python -m infra.local_s3 --bucket mgie          # prints the env to export, serves until Ctrl-C

Every process that should see it needs the printed environment (AWS_ENDPOINT_URL and dummy keys): the
SDKs under s3fs and pyarrow read them, exactly as pods read them from the mgie-s3 Secret.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

from pipeline.dev.local_s3 import local_s3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a local S3 endpoint until interrupted.")
    ap.add_argument("--bucket", action="append", default=None, help="bucket to create (repeatable)")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args(argv)
    with local_s3(tuple(args.bucket or ["mgie"]), args.port) as s3:
        for k, v in s3.env().items():
            print(f"export {k}={v}")
        print(f"# serving {s3.url} (pid {os.getpid()}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
