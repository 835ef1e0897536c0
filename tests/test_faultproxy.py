"""The fault-injecting proxy itself: transparent when told to be, faults at the asked rate, deterministic,
bounded so retrying clients get through, refuses writes on demand, and stops by itself."""

from __future__ import annotations

import time
from collections import Counter

import botocore.config
import botocore.exceptions
import pytest

from tests.faultproxy import FaultPlan, FaultProxy


def _client(s3, endpoint: str, attempts: int):
    import boto3

    cfg = botocore.config.Config(
        retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=5, read_timeout=10
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=s3.region,
        config=cfg,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
    )


def _attempt_all(client, bucket: str, n: int) -> list[str]:
    """PUT then GET n objects without retries; the outcome of each request, in order."""
    outcomes = []
    for i in range(n):
        for op in ("put", "get"):
            try:
                if op == "put":
                    client.put_object(Bucket=bucket, Key=f"k/{i}", Body=b"x" * 1000)
                else:
                    assert client.get_object(Bucket=bucket, Key=f"k/{i}")["Body"].read() == b"x" * 1000
                outcomes.append("ok")
            except botocore.exceptions.ClientError as e:
                outcomes.append(e.response["Error"]["Code"])
            except (botocore.exceptions.BotoCoreError, AssertionError) as e:
                outcomes.append(type(e).__name__)
    return outcomes


def test_transparent_without_faults(s3):
    bucket = s3.new_bucket("fp")
    with FaultProxy(s3.url) as proxy:
        c = _client(s3, proxy.url, attempts=1)
        body = bytes(range(256)) * 400  # 100 KB, binary
        c.put_object(Bucket=bucket, Key="a/b.bin", Body=body)
        assert c.get_object(Bucket=bucket, Key="a/b.bin")["Body"].read() == body
        assert c.head_object(Bucket=bucket, Key="a/b.bin")["ContentLength"] == len(body)
        assert [o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b.bin"]
        c.delete_object(Bucket=bucket, Key="a/b.bin")
        assert proxy.stats.faults.total() == 0 and proxy.stats.forwarded == proxy.stats.requests == 5
    assert s3.list_keys(bucket) == []


def test_faults_at_rate_deterministic_and_bounded(s3):
    plan = FaultPlan(error_500=0.15, slow_down=0.15, drop=0.1, cut=0.1, seed=3, ensure_each=True)
    bucket = s3.new_bucket("fp")
    runs = []
    for _ in range(2):  # same seed, same requests -> same faults (faults depend on method + path, not timing)
        with FaultProxy(s3.url, plan) as proxy:
            outcomes = _attempt_all(_client(s3, proxy.url, attempts=1), bucket, 40)
            runs.append((outcomes, dict(proxy.stats.faults)))
        s3.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in s3.list_keys(bucket)]})
    (first, faults), (second, faults2) = runs
    assert first == second and faults == faults2
    # The injected faults, not the failed requests (a GET whose PUT was faulted fails too, unfaulted). The
    # first 4 requests take one kind each (ensure_each); of the other 76, the 38 GETs are faulted at 0.5 and
    # the 38 PUTs at 0.4 (a cut drawn for a PUT passes): 38.2 expected, sd 4.3. The draws hash the per-session
    # bucket name, so the count varies between sessions: P(outside 22..56) = 4e-5.
    injected = sum(faults.values())
    assert 22 <= injected <= 56, f"{injected}/80 requests faulted for a 50% fault plan: {faults}"
    assert sum(o != "ok" for o in first) >= injected  # every injected fault failed its request
    assert {"InternalError", "SlowDown"} <= set(first)
    assert set(faults) == {"error_500", "slow_down", "drop", "cut"}

    # a retrying client gets every request through: no (method, path) is faulted more than twice in a row.
    # (A body cut half-way is not retried by botocore itself: the call has returned when the read fails.)
    bucket = s3.new_bucket("fp")
    plan = FaultPlan(error_500=0.2, slow_down=0.2, drop=0.2, seed=4, max_per_request=1, ensure_each=True)
    with FaultProxy(s3.url, plan) as proxy:  # (small: every retry costs SDK back-off time)
        assert _attempt_all(_client(s3, proxy.url, attempts=2), bucket, 4) == ["ok"] * 8
        assert set(proxy.stats.faults) == {"error_500", "slow_down", "drop"}
        assert max(Counter((m, p) for _, m, p in proxy.stats.faulted).values()) == 1


def test_max_faults_and_path_prefix(s3):
    bucket = s3.new_bucket("fp")
    plan = FaultPlan(error_500=1.0, max_faults=3, path_prefix=f"/{bucket}/k/")
    with FaultProxy(s3.url, plan) as proxy:
        c = _client(s3, proxy.url, attempts=1)
        c.list_objects_v2(Bucket=bucket)  # outside the prefix: never faulted
        outcomes = _attempt_all(c, bucket, 4)
        # put k/0, get k/0, put k/1 faulted; get k/1 then finds nothing; the rest passes
        assert outcomes == ["InternalError"] * 3 + ["NoSuchKey"] + ["ok"] * 4
        assert proxy.stats.faults == {"error_500": 3}


def test_deny_writes(s3):
    bucket = s3.new_bucket("fp")
    with FaultProxy(s3.url, FaultPlan(deny_writes=f"/{bucket}/out/")) as proxy:
        c = _client(s3, proxy.url, attempts=3)
        c.put_object(Bucket=bucket, Key="in/a", Body=b"a")
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            c.put_object(Bucket=bucket, Key="out/a", Body=b"a")
        assert proxy.stats.denied == 1
    assert s3.list_keys(bucket) == ["in/a"]


def test_stops_by_itself(s3):
    proxy = FaultProxy(s3.url, ttl_s=0.5).start()
    url = proxy.url
    deadline = time.time() + 10
    while proxy.running and time.time() < deadline:
        time.sleep(0.05)
    assert not proxy.running
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        _client(s3, url, attempts=1).list_buckets()
    proxy.stop()  # idempotent
