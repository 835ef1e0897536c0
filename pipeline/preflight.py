"""A quick look at every S3 location a job names, before any work: one line per problem, in seconds.

    check_s3(["s3://bucket/in/shard-{000..009}.tar", "s3://bucket/out"], Reach(s3_endpoint=None))

Left to the job itself, a wrong endpoint or a missing bucket surfaces only after the storage client's retries
(minutes) and as a traceback. Here each bucket is listed once (one key) with a short timeout and few
retries, and the failure becomes a `StorageProblem`: the URL, the cause and the fix in one line. Credentials
are never part of a message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

from pipeline.location import FROM_ENVIRONMENT, Reach
from pipeline.refusals import BadSetting


class StorageProblem(BadSetting):
    """A location cannot be used: `url: cause. fix`. A refusal, so every job reports it as a bad setting
    (one line, exit status 2)."""


@dataclass(frozen=True)
class _Location:
    url: str
    bucket: str
    prefix: str  # up to the first wildcard or brace


def _locations(urls: Iterable[str]) -> list[_Location]:
    out: dict[str, _Location] = {}
    for url in urls:
        if not url.startswith(("s3://", "s3a://")):
            continue
        bucket, _, key = url.split("://", 1)[1].partition("/")
        prefix = re.split(r"[*?\[{]", key, maxsplit=1)[0]
        out.setdefault(bucket, _Location(url, bucket, prefix))
    return list(out.values())


def check_s3(urls: Iterable[str], reach: Reach = FROM_ENVIRONMENT, timeout_s: float = 3.0) -> None:
    """Lists one key of each S3 bucket among `urls`; raises StorageProblem on the first that fails."""
    locations = _locations(urls)
    if not locations:
        return
    import boto3
    import botocore.exceptions as bex
    from botocore.config import Config

    endpoint = reach.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    where = f"endpoint {endpoint}" if endpoint else "AWS S3"
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2, "mode": "standard"})
    # a refused connection or a missing bucket is certain at once; 5xx answers and dropped connections are
    # left to the job's own retries, so a flaky store never fails here
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise StorageProblem(
            f"{locations[0].url}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            f"AWS_PROFILE, or run where an instance/pod role provides them."
        )
    client = session.client("s3", config=config, **Reach(endpoint).client_kwargs)
    for loc in locations:
        try:
            client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix, MaxKeys=1)
        except (bex.EndpointConnectionError, bex.ConnectTimeoutError) as e:
            raise StorageProblem(
                f"{loc.url}: cannot reach {where} ({type(e).__name__}). Check --endpoint-url "
                f"(or AWS_ENDPOINT_URL) and that the store is up."
            ) from None
        except bex.NoCredentialsError:
            raise StorageProblem(
                f"{loc.url}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE."
            ) from None
        except bex.ClientError as e:
            problem = _client_error(loc, e, where)
            if problem:
                raise StorageProblem(problem) from None
        except bex.HTTPClientError:
            pass  # a dropped or cut answer, a slow one: a flaky store, not a wrong setting; the job retries
        except bex.BotoCoreError as e:  # e.g. an endpoint URL that is not a URL
            raise StorageProblem(f"{loc.url}: {type(e).__name__} talking to {where}. Check --endpoint-url.") from None


def _client_error(loc: _Location, e, where: str) -> str | None:
    """The one-line problem for a definite refusal; None for answers a retry may change (5xx, throttling)."""
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchBucket", "404") or status == 404:
        return f"{loc.url}: bucket {loc.bucket!r} does not exist on {where}. Create it, or fix the bucket name."
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return (
            f"{loc.url}: {where} rejected the credentials ({code}). Check AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY or the profile, and that they belong to this endpoint."
        )
    if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
        return (
            f"{loc.url}: access denied by {where}. Grant these credentials s3:ListBucket and s3:GetObject "
            f"(and s3:PutObject / s3:DeleteObject for an output) on bucket {loc.bucket!r}."
        )
    if isinstance(status, int) and (status >= 500 or status == 429):
        return None
    return f"{loc.url}: {where} answered {code or status}. Check the URL and the store's settings."
