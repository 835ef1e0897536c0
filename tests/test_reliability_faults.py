"""Faults during an edit job, on local Ray over the real S3 endpoint: each ends with every input row in the
ledger exactly once and no orphan output, after at most one rerun of the same command.

- a model stage actor SIGKILLed in the middle of a batch (express, then edit): Ray restarts it, no rerun;
- the driver SIGKILLed during read, between a unit's files and its commit, mid-stage and right after a
  commit, each followed by the same command again (one output, the kills in sequence: every rerun resumes
  from what the previous kill left);
- the S3 endpoint answering 500 / 503 SlowDown and dropping or cutting connections (tests/faultproxy.py);
- a storage outage in the middle of reading a shard: the read fails instead of writing the rest off;
- the output store refusing writes part-way: the job stops with an error naming the refusal, nothing is
  half committed, and the same command finishes once the store accepts writes again.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.location import Reach
from tests.badinputs import good_jpeg, raw_tar
from tests.faultproxy import FaultPlan, FaultProxy

ROOT = Path(__file__).resolve().parent.parent
SHARDS, ROWS_PER_SHARD, UNIT_ROWS = 2, 8, 2  # 8 units of 2 rows
UNITS = SHARDS * ROWS_PER_SHARD // UNIT_ROWS


@pytest.fixture(scope="module")
def inputs(s3):
    bucket = s3.new_bucket("flt")
    for i in range(SHARDS):
        members = []
        for j in range(ROWS_PER_SHARD):
            members += [
                (f"s{i}-r{j:03d}.jpg", good_jpeg(seed=100 * i + j)),
                (f"s{i}-r{j:03d}.txt", b"make it brighter"),
            ]
        s3.client().put_object(Bucket=bucket, Key=f"in/f-{i:03d}.tar", Body=raw_tar(members))
    expected = {(f"s3://{bucket}/in/f-{i:03d}.tar", j) for i in range(SHARDS) for j in range(ROWS_PER_SHARD)}
    return {"bucket": bucket, "pattern": f"s3://{bucket}/in/f-{{000..{SHARDS - 1:03d}}}.tar", "expected": expected}


def _config(inputs, output: str, endpoint: str):
    from pipeline.config import EditConfig

    return EditConfig.of(
        input=inputs["pattern"],
        output=f"s3://{inputs['bucket']}/{output}",
        unit_rows=UNIT_ROWS,
        resources="cpu",
        endpoint_url=endpoint,
        progress=False,
    )


def _argv(inputs, output: str, endpoint: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--model",
        "tiny",
        "--input",
        inputs["pattern"],
        "--output",
        f"s3://{inputs['bucket']}/{output}",
        "--unit-rows",
        str(UNIT_ROWS),
        "--resources",
        "cpu",
        "--endpoint-url",
        endpoint,
        "--no-progress",
        "--json",
    ]


def _store(s3, inputs, output: str):
    from pipeline.storage import Store

    return Store.open(Reach(s3.url).at(f"s3://{inputs['bucket']}/{output}"))


def committed_consistent(s3, inputs, output: str) -> int:
    """What a crash may leave: every commit record names files that exist and hold its rows, and no input row
    is in two commits. Returns the number of committed units."""
    import pyarrow.parquet as pq

    from pipeline.ledger import load_state

    store = _store(s3, inputs, output)
    state = load_state(store)
    seen: Counter = Counter()
    for rec in state.commits.values():
        with store.fs.open(store.path(rec["files"]["ledger"]), "rb") as f:
            table = pq.read_table(f)
        assert table.num_rows == rec["n_rows"], rec["unit"]
        if rec["counts"]["ok"]:
            assert store.exists(rec["files"]["shard"]), f"{rec['unit']}: committed without its tar"
        seen.update(zip(table.column("source_shard").to_pylist(), table.column("row_index").to_pylist()))
    assert not seen or max(seen.values()) == 1, [k for k, n in seen.items() if n > 1]
    return len(state.commits)


def assert_exactly_once(s3, inputs, output: str) -> dict:
    """Every input row once in the committed ledger, ok, with its image once in the output; nothing else there."""
    from pipeline.ledger import load_state, read_ledger
    from pipeline.shards import read_members

    store = _store(s3, inputs, output)
    ledger = read_ledger(Reach(s3.url).at(store.url)).to_pylist()
    ids = Counter((r["source_shard"], r["row_index"]) for r in ledger)
    assert set(ids) == inputs["expected"] and max(ids.values()) == 1, sorted(k for k, n in ids.items() if n > 1)
    assert all(r["status"] == "ok" for r in ledger), [(r["key"], r["error"]) for r in ledger if r["status"] != "ok"]
    members: Counter = Counter()
    for tar in {r["output_shard"] for r in ledger}:
        data = store.read_bytes(tar)
        # every name, not read_members' dict: a member written twice in one tar must show up as two
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            names = archive.getnames()
        assert sorted(names) == sorted(read_members(data)), tar
        members.update(names)
    # JPEG inputs come back as JPEGs (--image-format defaults to the input's)
    assert members == Counter({f"{r['key']}.{ext}": 1 for r in ledger for ext in ("jpg", "json")})
    state = load_state(store)
    assert state.orphans == [] and state.stale_commits == [], (state.orphans, state.stale_commits)
    assert len(state.commits) == UNITS
    summary = json.loads(store.read_bytes("summary.json"))
    assert summary["complete"] and summary["read"] == summary["ok"] + summary["error"] + summary["skipped"]
    assert summary["read"] == len(inputs["expected"]) and summary["ledger_totals"]["rows"] == len(inputs["expected"])
    return summary


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------- actor kill


def _busy_stage_actor_pids(stage: str) -> list[int]:
    """PIDs of this Ray instance's live actors of `stage` that are inside a call right now (Ray titles a busy
    actor process `ray::MapWorker(Map(<stage>)).submit`)."""
    import ray._private.state

    pids = []
    for info in ray._private.state.actors().values():
        if info["State"] != "ALIVE" or not info.get("Pid") or stage not in info["ActorClassName"]:
            continue
        try:
            title = Path(f"/proc/{info['Pid']}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if stage in title and ".submit" in title:
            pids.append(info["Pid"])
    return pids


@pytest.mark.slow
def test_stage_actors_killed_mid_batch_are_restarted_and_nothing_is_lost_or_doubled(s3, ray_local, inputs, monkeypatch):
    import ray._private.state

    from pipeline.run import run_edit

    output = "actor-kill"
    # each unit waits 1 s inside the actor call: the kill lands in the middle of a batch, not between two
    monkeypatch.setenv("MGIE_BATCH_FAULTS", "express.sleep=1.0;edit.sleep=1.0")
    result: dict = {}

    def run():
        try:
            result["summary"] = run_edit(_config(inputs, output, s3.url))
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    killed = []
    for stage in ("ExpressStage", "EditStage"):
        busy: list[int] = []

        def found_busy(stage=stage, busy=busy) -> bool:
            busy[:] = _busy_stage_actor_pids(stage)  # kill exactly these: a second look may find the call over
            return bool(busy) or not thread.is_alive()

        _wait(found_busy, 300, f"a busy {stage} actor")
        assert busy, f"the run ended before a {stage} actor could be killed: {result}"
        for pid in busy:
            os.kill(pid, signal.SIGKILL)
            killed.append(stage)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the run did not finish after the actor kills"
    assert "summary" in result, f"the run raised instead of recovering: {result.get('error')!r}"
    summary = assert_exactly_once(s3, inputs, output)
    assert summary["skipped"] == 0  # one run, no rerun: Ray restarted the actors and retried their batches
    assert sorted(set(killed)) == ["EditStage", "ExpressStage"]
    restarts = {
        stage: max(
            a["NumRestarts"]
            for a in ray._private.state.actors().values()
            if stage in a["ActorClassName"] and a["JobID"] == ray_job_id()
        )
        for stage in ("ExpressStage", "EditStage")
    }
    assert all(n >= 1 for n in restarts.values()), restarts


def ray_job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


# ------------------------------------------------------------------------------------------ driver kills


def _start_driver(inputs, output: str, endpoint: str, ray_local, faults: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **ray_local.env(), "MGIE_BATCH_FAULTS": faults, "PYTHONPATH": str(ROOT)}
    out = open(log, "w")
    return subprocess.Popen(_argv(inputs, output, endpoint), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_driver_sigkill_during_read_commit_and_stages_then_rerun_is_exactly_once(s3, ray_local, inputs, tmp_path):
    from pipeline.ledger import load_state
    from pipeline.run import run_edit

    output = "driver-kill"
    store = _store(s3, inputs, output)
    commits = lambda: len([n for n in store.list("commits") if n.endswith(".json")])  # noqa: E731
    with FaultProxy(s3.url) as proxy:
        endpoint = proxy.url  # every run is the same command, with the proxy as its endpoint

        # 1. during read: input shards answer 3 s late; SIGKILL once a shard GET is in flight
        proxy.set_slow(f"/{inputs['bucket']}/in/", 3.0)
        proc = _start_driver(inputs, output, endpoint, ray_local, "", tmp_path / "1.log")
        reading = lambda: any(m == "GET" and p.startswith(f"/{inputs['bucket']}/in/") for m, p in proxy.stats.log)  # noqa: E731
        _wait(reading, 180, "a shard read", proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert committed_consistent(s3, inputs, output) == 0
        proxy.set_slow(None)

        # 2. between a unit's files and its commit record (the second unit of this run)
        proc = _start_driver(inputs, output, endpoint, ray_local, "driver.kill_before_commit=2", tmp_path / "2.log")
        assert proc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "2.log").read_text()[-3000:]
        assert committed_consistent(s3, inputs, output) == 1
        assert load_state(store).orphans, "the second unit's files should be there, uncommitted"

        # 3. mid-stage: SIGKILL from outside once two more units are committed, the rest in flight (each unit
        # waits 0.5 s in the one express actor, so the remaining units cannot all commit before the kill lands)
        proc = _start_driver(inputs, output, endpoint, ray_local, "express.sleep=0.5", tmp_path / "3.log")
        _wait(lambda: commits() >= 3, 300, "two more commits", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        after_mid = committed_consistent(s3, inputs, output)
        assert 3 <= after_mid < UNITS, f"the kill should land mid-run; {after_mid} units were committed"

        # 4. right after a commit record is written, before the driver notes it
        proc = _start_driver(inputs, output, endpoint, ray_local, "driver.kill_after_commit=1", tmp_path / "4.log")
        assert proc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "4.log").read_text()[-3000:]
        after_commit = committed_consistent(s3, inputs, output)
        assert after_commit == after_mid + 1

        # 5. the same command once more: finishes the rest, exactly once, orphans gone
        summary = run_edit(_config(inputs, output, endpoint))
    assert summary["skipped"] == after_commit * UNIT_ROWS and summary["ok"] == (UNITS - after_commit) * UNIT_ROWS
    assert summary["orphans_removed_at_start"] >= 1
    assert_exactly_once(s3, inputs, output)


# --------------------------------------------------------------------------------------------- S3 faults


@pytest.mark.slow
def test_s3_errors_slowdowns_and_dropped_connections_are_retried_without_loss(s3, ray_local, inputs):
    from pipeline.run import run_edit

    output = "s3-faults"
    plan = FaultPlan(error_500=0.1, slow_down=0.1, drop=0.08, cut=0.08, seed=11, ensure_each=True)
    with FaultProxy(s3.url, plan) as proxy:
        # one run, no rerun: the bounded faults must all be absorbed by the clients' retries
        summary = run_edit(_config(inputs, output, proxy.url))
        stats = proxy.stats
    assert summary["skipped"] == 0
    assert_exactly_once(s3, inputs, output)
    faulted = Counter((kind, method) for kind, method, _ in stats.faulted)
    assert set(k for k, _ in faulted) == {"error_500", "slow_down", "drop", "cut"}, faulted
    # every request of the job, input reads and output writes alike, went through the faulty proxy. Which
    # of them a fault hits is fixed by (seed, method, path), and the bucket name changes per test session,
    # so the placement itself is not asserted.
    seen = [p for _, p in stats.log]
    assert any("/in/" in p for p in seen) and any(f"/{output}/shards/" in p for p in seen), seen[:20]
    assert any(f"/{output}/commits/" in p for p in seen)


def test_storage_outage_in_the_middle_of_a_shard_fails_the_read_instead_of_writing_rows_off(s3, monkeypatch):
    """A shard read in many ranges; from the third range on the store answers 500 (past every client retry).
    The read must fail (the job stops, a rerun reads the shard again), not commit the rest as 'unreadable'."""
    from pipeline import rows, stages
    from pipeline.location import Location

    bucket = s3.new_bucket("outage")
    members = []
    for j in range(12):
        members += [(f"r{j:03d}.bin.jpg", os.urandom(40_000)), (f"r{j:03d}.txt", b"x")]
    s3.client().put_object(Bucket=bucket, Key="in/big.tar", Body=raw_tar(members))

    def small_blocks(where, mode="rb", **kwargs):  # real shards are GBs, read in many ranges; ours is 500 KB
        fs, path = where.fs()
        return fs.open(path, mode, block_size=64 * 1024)

    monkeypatch.setattr(Location, "open", small_blocks)
    item = {"shard": f"s3://{bucket}/in/big.tar", "committed": "{}"}
    plan = FaultPlan(error_500=1.0, max_per_request=1000, from_nth=2, methods=("GET",), path_prefix=f"/{bucket}/in/")
    with FaultProxy(s3.url, plan) as proxy:
        with pytest.raises(OSError):
            list(stages.read_shard(item, stages.ReadSettings(4, False, Reach(proxy.url))))
        assert proxy.stats.faults["error_500"] >= 2
    # the store is back: the same read gives every row, none written off
    units = list(stages.read_shard(item, stages.ReadSettings(4, False, Reach(s3.url))))
    samples = [s for u in units for s in rows.unpack(u["payload"])]
    assert [s["key"] for s in samples] == [f"r{j:03d}" for j in range(12)]
    assert all(s["status"] == rows.PENDING for s in samples)


# ------------------------------------------------------------------------------------ refused writes


@pytest.mark.slow
def test_output_store_refusing_writes_stops_the_job_clearly_with_nothing_half_committed(
    s3, ray_local, inputs, monkeypatch
):
    from pipeline.run import run_edit

    output = "refused"
    store = _store(s3, inputs, output)
    monkeypatch.setenv("MGIE_BATCH_FAULTS", "write.sleep=0.5")  # slow enough to switch the refusal on mid-run
    with FaultProxy(s3.url) as proxy:
        error: dict = {}

        def run():
            try:
                run_edit(_config(inputs, output, proxy.url))
            except BaseException as e:  # noqa: BLE001 - the assertion below looks at it
                error["e"] = e

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        _wait(lambda: len(store.list("commits")) >= 2, 300, "two commits")
        proxy.set_deny_writes(f"/{inputs['bucket']}/{output}/")  # the bucket policy changes under the job
        thread.join(timeout=300)
        assert not thread.is_alive()
        assert "e" in error, "the job finished although its output store refused writes"
        # the stage's own PermissionError reaches the driver (the command line turns it into a short message)
        assert isinstance(error["e"], PermissionError), f"{type(error['e']).__name__}: {error['e']}"
        assert "Access Denied" in str(error["e"]) and "write_unit" in str(error["e"])
        assert proxy.stats.denied >= 1
        committed = committed_consistent(s3, inputs, output)
        assert 2 <= committed < UNITS

        # writes allowed again: the same command finishes the job
        proxy.set_deny_writes(None)
        monkeypatch.delenv("MGIE_BATCH_FAULTS")
        summary = run_edit(_config(inputs, output, proxy.url))
    assert summary["skipped"] == committed * UNIT_ROWS
    assert_exactly_once(s3, inputs, output)


def test_command_line_on_a_store_refusing_every_write_says_so_and_writes_nothing(s3, inputs, capsys):
    from jobs.cli import main

    output = "refused-from-start"
    with FaultProxy(s3.url, FaultPlan(deny_writes=f"/{inputs['bucket']}/{output}/")) as proxy:
        rc = main(
            [
                "edit",
                "--input",
                inputs["pattern"],
                "--output",
                f"s3://{inputs['bucket']}/{output}",
                "--endpoint-url",
                proxy.url,
                "--no-progress",
            ]
        )
        assert proxy.stats.denied >= 1
    err = capsys.readouterr().err
    assert rc == 3 and "the output store refused a write" in err and "Traceback" not in err, err
    assert s3.list_keys(inputs["bucket"], f"{output}/") == []
