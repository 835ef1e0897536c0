"""A local S3 endpoint (moto's server, real HTTP on 127.0.0.1) for trying the cluster flow on one machine
and for the scaling benchmark. Not for production data: it keeps everything in memory.

    python -m infra.local_s3 --bucket mgie          # prints the env to export, serves until Ctrl-C

Every process that should see it needs the printed environment (AWS_ENDPOINT_URL and dummy keys): the
SDKs under s3fs and pyarrow read them, exactly as pods read them from the mgie-s3 Secret.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class LocalS3:
    endpoint_url: str  # http://127.0.0.1:PORT
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    def env(self) -> dict[str, str]:
        """Environment for processes (drivers, Ray workers) that talk to this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def storage_options(self) -> dict:
        """fsspec / s3fs options for this endpoint, for code that does not read the environment."""
        return {
            "key": self.access_key_id,
            "secret": self.secret_access_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key)


@contextlib.contextmanager
def local_s3(buckets: tuple[str, ...] = ("mgie",), port: int = 0) -> Iterator[LocalS3]:
    """Serve S3 on 127.0.0.1 (a free port unless given) with `buckets` created; stopped on exit."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        s3 = LocalS3(endpoint_url=f"http://{host}:{bound}")
        client = s3.client()
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a local S3 endpoint until interrupted.")
    ap.add_argument("--bucket", action="append", default=None, help="bucket to create (repeatable)")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args(argv)
    with local_s3(tuple(args.bucket or ["mgie"]), args.port) as s3:
        for k, v in s3.env().items():
            print(f"export {k}={v}")
        print(f"# serving {s3.endpoint_url} (pid {os.getpid()}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
