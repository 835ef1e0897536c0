"""Where bytes live: a URL and how to reach it, resolved in one place for everything a job reads or writes.

    reach = Reach(s3_endpoint="http://127.0.0.1:9000")   # from --endpoint-url; None: the environment's
    shard = reach.at("s3://bucket/in/shard-000.tar")    # a Location: url + its fsspec options
    with shard.open() as f: ...
    fs, path = shard.fs()
    image = shard.at("s3://bucket/photos/a.jpg")        # another URL reached the same way

Both are small frozen dataclasses, so a Ray task receives them pickled and opens the same stores the driver
does. Without an explicit endpoint, botocore reads the standard AWS_ENDPOINT_URL variable itself, in every Ray
worker too (it inherits the variable from its node).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec

S3_SCHEMES = ("s3://", "s3a://")


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def strip_file_scheme(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


@dataclass(frozen=True)
class Reach:
    """How this job reaches its stores: the S3 endpoint (`--endpoint-url`), or None for the environment's."""

    s3_endpoint: str | None = None

    @classmethod
    def of(cls, endpoint_url: str | None) -> Reach:
        return cls(endpoint_url or None)

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """Keywords of a boto3 / botocore S3 client for this reach (s3fs passes the same ones on)."""
        return {"endpoint_url": self.s3_endpoint} if self.s3_endpoint else {}

    def options(self, url: str) -> dict[str, Any]:
        """fsspec storage options for `url`: the explicit endpoint for an S3 URL, else none (the environment's)."""
        if self.s3_endpoint and url.startswith(S3_SCHEMES):
            return {"client_kwargs": self.client_kwargs}
        return {}

    def at(self, url: str) -> Location:
        return Location(url, self)


FROM_ENVIRONMENT = Reach()  # no explicit endpoint: botocore's own (AWS_ENDPOINT_URL, else AWS S3)


@dataclass(frozen=True)
class Location:
    """One URL (local path, file://, s3://, any fsspec URL) and the reach its options come from."""

    url: str
    reach: Reach = FROM_ENVIRONMENT

    @property
    def options(self) -> dict[str, Any]:
        return self.reach.options(self.url)

    @property
    def absolute(self) -> Location:
        """Local paths made absolute (a ledger's URL must open from any later job's folder); remote ones kept."""
        return self.at(os.path.abspath(strip_file_scheme(self.url))) if is_local(self.url) else self

    def at(self, url: str) -> Location:
        """Another URL reached the same way: a shard a pattern matched, an image a manifest names."""
        return Location(url, self.reach)

    def fs(self):
        """-> (filesystem, path within it); fsspec caches filesystems per options, so this is cheap. A local
        path is taken as a path, never parsed as a URL (a name holding '::' is not an fsspec chain)."""
        if is_local(self.url):
            return fsspec.filesystem("file"), strip_file_scheme(self.url)
        return fsspec.core.url_to_fs(self.url, **self.options)

    def open(self, mode: str = "rb", **kwargs):
        """An open file object (binary by default); the caller closes it (a `with` block)."""
        fs, path = self.fs()
        return fs.open(path, mode, **kwargs)

    def __str__(self) -> str:
        return self.url
