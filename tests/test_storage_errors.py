"""A store that cannot be used is one line naming the URL, the cause and the fix; exit status 2, no traceback,
within 10 s, and no credential in the output. Each case runs the real command line as its own process."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.local_http import QuietHandler, serving

ROOT = Path(__file__).resolve().parent.parent
SECRET = "wJalrXUtnFEMI-do-not-print-me"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Denied(QuietHandler):
    """An S3 endpoint that refuses everything, as a bucket policy without these credentials would."""

    def _deny(self):
        body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.reply(403, body, {"Content-Type": "application/xml"})

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _deny


@pytest.fixture(scope="module")
def denying_endpoint():
    with serving(_Denied) as url:
        yield url


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def _env(s3, tmp_path, **overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env.update(
        s3.env(),
        PYTHONPATH=str(ROOT),
        TMPDIR=str(tmp_path),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
    )
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@functools.lru_cache(maxsize=1)
def _cli_start_s() -> float:
    """What starting the CLI costs on this machine now (its imports): the refusals are timed against it, so that
    a loaded machine does not turn a fast refusal into a failure, while a retry loop of its own still does."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], cwd=ROOT, capture_output=True, check=True, timeout=120)
    return time.monotonic() - t0


def _assert_one_line(rc: int, out: str, seconds: float, *needles: str) -> str:
    """Exit 2, no traceback, no secret, fast; returns the error line (status lines may come before it)."""
    assert rc == 2, out
    assert "Traceback" not in out and SECRET not in out, out
    # botocore's retries with back-off would add tens of seconds; a refusal adds a few to the CLI's start
    assert seconds < _cli_start_s() + 6, f"took {seconds:.1f} s (the CLI starts in {_cli_start_s():.1f} s)"
    errors = [line for line in out.splitlines() if line.strip() and not _is_status(line)]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _is_status(line: str) -> bool:
    return any(s in line for s in ("logs go to", "reading the input list"))


def _edit(input_url: str, output_url: str, *extra: str) -> list[str]:
    return ["edit", "--input", input_url, "--output", output_url, "--model", "noop", "--no-progress", *extra]


def test_no_credentials(s3, tmp_path):
    bucket = s3.new_bucket("cred")
    env = _env(s3, tmp_path, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    rc, out, seconds = _cli(_edit(f"s3://{bucket}/in", f"s3://{bucket}/out"), env)
    _assert_one_line(rc, out, seconds, f"s3://{bucket}/out", "no S3 credentials found", "AWS_ACCESS_KEY_ID")


def test_wrong_endpoint(s3, tmp_path):
    bucket = s3.new_bucket("endp")
    wrong = f"http://127.0.0.1:{_free_port()}"
    rc, out, seconds = _cli(
        _edit(f"s3://{bucket}/in", f"s3://{bucket}/out", "--endpoint-url", wrong), _env(s3, tmp_path)
    )
    _assert_one_line(rc, out, seconds, f"s3://{bucket}/out", f"cannot reach endpoint {wrong}", "--endpoint-url")


def test_missing_bucket(s3, tmp_path):
    rc, out, seconds = _cli(_edit("s3://no-such-bucket-xyz/in", "s3://no-such-bucket-xyz/out"), _env(s3, tmp_path))
    _assert_one_line(rc, out, seconds, "s3://no-such-bucket-xyz/out", "does not exist", "Create it")


def test_access_denied(s3, tmp_path, denying_endpoint):
    rc, out, seconds = _cli(
        _edit("s3://locked/in", "s3://locked/out", "--endpoint-url", denying_endpoint), _env(s3, tmp_path)
    )
    _assert_one_line(rc, out, seconds, "s3://locked/out", "access denied", "s3:GetObject")


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_of_a_prefix_without_a_run(s3, tmp_path, command):
    bucket = s3.new_bucket("norun")
    args = [command, f"s3://{bucket}/never-written"] + (
        ["--html", str(tmp_path / "r.html")] if command == "report" else []
    )
    rc, out, seconds = _cli(args, _env(s3, tmp_path))
    _assert_one_line(rc, out, seconds, f"s3://{bucket}/never-written", "no ")
    rc, out, seconds = _cli([command, "s3://no-such-bucket-xyz/out", *args[2:]], _env(s3, tmp_path))
    _assert_one_line(rc, out, seconds, "does not exist")
