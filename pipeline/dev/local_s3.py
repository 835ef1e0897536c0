"""A local S3 endpoint: moto's server, real HTTP on 127.0.0.1, everything in memory.

Used by `mgie-batch demo`, the benchmarks and the test suite, and served on its own by
`python -m infra.local_s3`. Not for production data. Every process that should see it needs its
environment (`LocalS3.env()`: AWS_ENDPOINT_URL and dummy keys), which the SDKs under s3fs and pyarrow read.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator

from pipeline.location import Reach


@dataclass(frozen=True)
class LocalS3:
    url: str  # the endpoint, http://127.0.0.1:PORT
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    def env(self) -> dict[str, str]:
        """Environment for processes (drivers, Ray workers) that talk to this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.url,
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
            "client_kwargs": {**Reach(self.url).client_kwargs, "region_name": self.region},
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            **Reach(self.url).client_kwargs,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@contextlib.contextmanager
def local_s3(buckets: tuple[str, ...] = ("mgie",), port: int = 0) -> Iterator[LocalS3]:
    """Serve S3 on 127.0.0.1 (a free port unless given) with `buckets` created; stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        s3 = LocalS3(url=f"http://{host}:{bound}")
        client = s3.client()
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()
