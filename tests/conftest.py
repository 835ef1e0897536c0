"""Session-wide test infrastructure: one real S3 endpoint and one local Ray instance for the whole run.

Both are real (moto's S3 server over HTTP on 127.0.0.1, a local Ray head), started once per session and
stopped at teardown: starting Ray per test would cost more than the tests on a 2-core machine.

    def test_x(s3, ray_local):        # s3: S3Endpoint, ray_local: RayLocal
        bucket = s3.new_bucket()      # a fresh, empty bucket per test keeps tests independent
        url = f"s3://{bucket}/out"    # any process started after the fixture sees AWS_ENDPOINT_URL

The S3 fixture exports AWS_ENDPOINT_URL and dummy keys into os.environ *before* Ray starts, so Ray
workers (children of the raylet, which inherits the driver's environment) reach the same endpoint, and so
does any subprocess a test starts. `ray_local` depends on `s3` for that reason.

Other test files may append fixtures at the end of this file.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pytest

from pipeline.dev.local_s3 import LocalS3, local_s3

# Before anything imports Ray: no token auth for the local instance, no usage reporting.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class S3Endpoint(LocalS3):
    """The session's endpoint (pipeline.dev.local_s3.LocalS3: env(), storage_options(), client()) plus test helpers."""

    _counter: itertools.count = field(default_factory=itertools.count, repr=False, compare=False)

    def new_bucket(self, prefix: str = "t") -> str:
        """Creates and returns a bucket name no other test in this session uses."""
        name = f"{prefix}-{os.getpid()}-{next(self._counter)}"
        self.client().create_bucket(Bucket=name)
        return name

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)


@pytest.fixture(scope="session")
def s3():
    """A real S3 endpoint (moto's server, HTTP on 127.0.0.1, a free port) for the session."""
    with local_s3(buckets=()) as served:
        endpoint = S3Endpoint(url=served.url)
        saved = {k: os.environ.get(k) for k in endpoint.env()}
        os.environ.update(endpoint.env())
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@dataclass(frozen=True)
class RayLocal:
    address: str  # GCS address: a subprocess driver attaches with RAY_ADDRESS=<address>
    temp_dir: str

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should run its job on this Ray instance."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="session")
def ray_local(s3):
    """One local Ray instance (2 CPUs, own temp dir, no dashboard) for the session; shut down at the end."""
    import ray

    # Unix socket paths have a ~107-byte limit: keep the temp dir short.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # workers import the project from this checkout even when it is not pip-installed
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _temp_dir=temp_dir,
        object_store_memory=512 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # keeps test logs readable
        yield RayLocal(address=ray.get_runtime_context().gcs_address, temp_dir=temp_dir)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# tests/test_cluster.py starts a second Ray cluster (ray.cluster_utils) inside the test process; afterwards
# this process's own Ray session (`ray_local`) is unusable and the next Ray call exits the interpreter. It
# therefore runs in a pytest process of its own: `make test` runs it after the rest of the suite.
_ISOLATED_MODULES = ("test_cluster.py",)


def pytest_collection_modifyitems(config, items):
    isolated = [i for i in items if i.path.name in _ISOLATED_MODULES]
    if isolated and len(isolated) < len(items):
        reason = "runs in its own pytest process (make test runs it after the rest of the suite)"
        for item in isolated:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIPModel and its tokenizer in transformers' layout, as a user's export would be
    (--qa-clip in the auto-QA tests)."""
    from pipeline.evaluation.metrics import build_tiny_clip

    model, tokenizer, _ = build_tiny_clip(seed=0)
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
