"""Nothing lost on real object storage: shards cut short, shards that vanish or are rewritten, two drivers on
one output, and a changed precision, each over the real S3 endpoint with local Ray and the tiny model.

Every test checks the books row by row: each input `(source_shard, row_index)` exactly once in the committed
ledger, no output tar member twice, and `read = ok + error + skipped` in the summary.
"""

from __future__ import annotations

import io
import json
import os
import socket
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

UNIT_ROWS = 2
ROOT = Path(__file__).resolve().parent.parent


def _shard(rows: int, seed: int = 0, text: bytes = b"make it brighter") -> bytes:
    members = []
    for j in range(rows):
        members += [(f"k{j:03d}.jpg", good_jpeg(seed=seed + j)), (f"k{j:03d}.txt", text)]
    return raw_tar(members)


def _member_offsets(data: bytes) -> dict[str, int]:
    """Header offset of each member: a cut there leaves a valid tar prefix without the end-of-archive."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m.offset for m in tar.getmembers()}


def _config(url: str, output: str, s3, **kw):
    from pipeline.config import EditConfig

    return EditConfig.of(
        input=url,
        output=output,
        unit_rows=kw.pop("unit_rows", UNIT_ROWS),
        resources="cpu",
        endpoint_url=s3.url,
        progress=False,
        **kw,
    )


def _argv(url: str, output: str, s3, *extra: str) -> list[str]:
    return [
        "edit",
        "--model",
        "tiny",
        "--input",
        url,
        "--output",
        output,
        "--unit-rows",
        str(UNIT_ROWS),
        "--resources",
        "cpu",
        "--endpoint-url",
        s3.url,
        "--no-progress",
        *extra,
    ]


def books(s3, output: str, expected_rows: dict[str, int]) -> list[dict]:
    """Row-level exactly once: every (shard, row_index) of `expected_rows` {shard url: rows} once in the
    committed ledger and nothing else; each ok row's PNG + JSON once in the output tars; the summary balances.
    Returns the ledger rows."""
    from pipeline.ledger import load_state, read_ledger
    from pipeline.storage import Store

    store = Store.open(Reach(s3.url).at(output))
    store.fs.invalidate_cache()  # another process (a subprocess driver) wrote here since this one listed
    ledger = read_ledger(Reach(s3.url).at(output)).to_pylist()
    ids = Counter((r["source_shard"], r["row_index"]) for r in ledger)
    expected = {(url, i) for url, n in expected_rows.items() for i in range(n)}
    assert set(ids) == expected, sorted(set(ids) ^ expected)
    assert max(ids.values()) == 1, sorted(k for k, n in ids.items() if n > 1)
    members: Counter = Counter()
    for tar in {r["output_shard"] for r in ledger if r["output_shard"]}:
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes(tar))) as archive:
            members.update((tar, name) for name in archive.getnames())
    assert members == Counter(
        {(r["output_shard"], f"{r['key']}.{ext}"): 1 for r in ledger if r["status"] == "ok" for ext in ("jpg", "json")}
    )  # JPEG in, JPEG out (the default format)
    state = load_state(store)
    assert state.orphans == [] and state.stale_commits == []
    summary = json.loads(store.read_bytes("summary.json"))
    assert summary["read"] == summary["ok"] + summary["error"] + summary["skipped"]
    assert summary["ledger_totals"]["rows"] == len(ledger)
    return ledger


# ------------------------------------------------------------------------------------- 1. cut-short shards


@pytest.mark.parametrize("unit_rows,retry_errors", [(2, False), (4, True)], ids=["plain-rerun", "retry-errors"])
def test_a_shard_cut_at_a_member_boundary_stays_open_until_the_whole_file_is_read(
    s3, ray_local, unit_rows, retry_errors
):
    """A partial upload (a valid tar prefix, no end-of-archive blocks) is never committed as complete: its
    tail is one read error row that every later run reopens; with the whole file in place the same command
    edits exactly the rows not yet edited. unit_rows=4 puts the tail in a unit with ok rows, which
    --retry-errors used to crash on (KeyError: a row the old unit never had)."""
    from pipeline.ledger import load_state
    from pipeline.run import run_edit
    from pipeline.storage import Store

    bucket = s3.new_bucket("cut")
    url, output = f"s3://{bucket}/in/s-000.tar", f"s3://{bucket}/out"
    whole = _shard(5)
    cut = whole[: _member_offsets(whole)["k003.jpg"]]  # rows 0..2 whole, then the upload stopped
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=cut)

    first = run_edit(_config(url, output, s3, unit_rows=unit_rows))
    ledger = books(s3, output, {url: 3})
    tail = ledger[-1]
    assert (tail["row_index"], tail["status"], tail["error_stage"]) == (2, "error", "read")
    assert "no end-of-archive" in tail["error"], tail["error"]  # row 2 may lack members: not edited
    assert [r["status"] for r in ledger[:2]] == ["ok", "ok"]
    assert first["incomplete_shards"] == [url] and (first["ok"], first["error"]) == (2, 1)
    state = load_state(Store.open(Reach(s3.url).at(output)))
    assert any(rec["unreadable_tail"] for rec in state.commits.values())

    # the same command on the same cut file reopens the tail and nothing else
    again = run_edit(_config(url, output, s3, unit_rows=unit_rows, retry_errors=retry_errors))
    assert again["incomplete_shards"] == [url] and (again["ok"], again["error"]) == (0, 1)
    books(s3, output, {url: 3})

    # the upload is finished: the same command edits rows 2, 3, 4 and only those
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=whole)
    done = run_edit(_config(url, output, s3, unit_rows=unit_rows, retry_errors=retry_errors))
    ledger = books(s3, output, {url: 5})
    assert all(r["status"] == "ok" for r in ledger), [(r["row_index"], r["error"]) for r in ledger]
    assert (done["ok"], done["error"], done["skipped"], done["incomplete_shards"]) == (3, 0, 2, [])


def test_a_shard_cut_inside_a_sample_gives_a_read_error_row_not_a_missing_field(s3):
    """Cut inside the second sample's txt: that sample is the unreadable tail (read), not an image without an
    instruction (validate)."""
    from pipeline import rows
    from pipeline.read_stage import ReadSettings, read_shard

    bucket = s3.new_bucket("cutin")
    whole = _shard(3)
    offsets = _member_offsets(whole)
    for name, end in (("mid-member", offsets["k001.txt"] + 512 + 5), ("after-jpg", offsets["k001.txt"])):
        s3.client().put_object(Bucket=bucket, Key=f"in/{name}.tar", Body=whole[:end])
        item = {"shard": f"s3://{bucket}/in/{name}.tar", "size": end, "committed": "{}"}
        samples = [
            s for u in read_shard(item, ReadSettings(4, False, Reach(s3.url))) for s in rows.unpack(u["payload"])
        ]
        assert [(s["row_index"], s["status"]) for s in samples] == [(0, rows.PENDING), (1, rows.ERROR)], name
        assert samples[1]["error_stage"] == "read" and samples[1]["key"] == "__unreadable__000001", samples[1]
        assert samples[1]["unreadable_tail"] == {
            "row": 1,
            "bytes": end,
            "sha256": samples[1]["unreadable_tail"]["sha256"],
        }


# ---------------------------------------------------------------------------------- 2. a vanished shard


def test_a_shard_that_vanishes_after_planning_stops_the_job_and_is_never_committed(s3, ray_local, monkeypatch, capsys):
    from jobs.cli import main
    from pipeline import run
    from pipeline.ledger import load_state
    from pipeline.storage import Store

    bucket = s3.new_bucket("gone")
    client = s3.client()
    for i in range(2):
        client.put_object(Bucket=bucket, Key=f"in/s-{i:03d}.tar", Body=_shard(2, seed=10 * i))
    pattern, output = f"s3://{bucket}/in/s-{{000..001}}.tar", f"s3://{bucket}/out"
    planned = run.current_identities

    def plan_then_delete(shards, reach):  # the shard is there when planned, gone when read
        out = planned(shards, reach)
        client.delete_object(Bucket=bucket, Key="in/s-001.tar")
        return out

    monkeypatch.setattr(run, "current_identities", plan_then_delete)
    rc = main(_argv(pattern, output, s3))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"input shard s3://{bucket}/in/s-001.tar was there when the run was planned but is not found" in err
    assert "Traceback" not in err
    state = load_state(Store.open(Reach(s3.url).at(output)))
    assert all(rec["source_shard"].endswith("s-000.tar") for rec in state.commits.values())
    assert "out/lease.json" not in s3.list_keys(bucket, "out/")  # released on the way out

    # restored: the same command finishes. In a fresh driver process: the failed job's cancelled tasks may
    # have left this process's Ray workers half-way through importing torch
    client.put_object(Bucket=bucket, Key="in/s-001.tar", Body=_shard(2, seed=10))
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *_argv(pattern, output, s3)],
        cwd=ROOT,
        env={**os.environ, **ray_local.env()},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    books(s3, output, {f"s3://{bucket}/in/s-000.tar": 2, f"s3://{bucket}/in/s-001.tar": 2})


# ---------------------------------------------------------------------------------- 3. a rewritten shard


def test_a_shard_rewritten_between_runs_is_refused_naming_the_shard_and_what_changed(s3, ray_local, capsys):
    """Same name, same size, other bytes (only the instruction differs): the ETag tells; the resume refuses
    before writing anything instead of mixing old and new rows in one output."""
    from jobs.cli import main
    from pipeline.run import run_edit

    bucket = s3.new_bucket("rewr")
    url, output = f"s3://{bucket}/in/s-000.tar", f"s3://{bucket}/out"
    old, new = _shard(4, text=b"make it brighter"), _shard(4, text=b"make it  darker!")
    assert len(old) == len(new) and old != new
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=old)
    run_edit(_config(url, output, s3, limit=1))  # one unit of two committed, then stopped
    recorded = json.loads(s3.client().get_object(Bucket=bucket, Key="out/inputs.json")["Body"].read())
    assert recorded["shards"][url]["size"] == len(old) and recorded["shards"][url]["kind"] == "etag"

    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=new)
    before = {k: s3.client().head_object(Bucket=bucket, Key=k)["ETag"] for k in s3.list_keys(bucket, "out/")}
    rc = main(_argv(url, output, s3))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"refused: input shard {url} (etag " in err and "refusing to mix" in err, err
    after = {k: s3.client().head_object(Bucket=bucket, Key=k)["ETag"] for k in s3.list_keys(bucket, "out/")}
    assert after == before  # nothing written, nothing swept

    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=old)  # the original back: it resumes
    assert main(_argv(url, output, s3)) == 0
    books(s3, output, {url: 4})


def test_a_shard_of_another_size_than_planned_stops_the_read(s3):
    """Rewritten between planning and reading (or while being read): the read stage refuses it instead of
    cutting the new bytes into the planned units."""
    from pipeline.read_stage import ReadSettings, read_shard
    from pipeline.shards import InputShardChanged

    bucket = s3.new_bucket("size")
    data = _shard(2)
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=data)
    item = {"shard": f"s3://{bucket}/in/s-000.tar", "size": len(data) - 512, "committed": "{}"}
    with pytest.raises(InputShardChanged, match=f"the shard is {len(data)} bytes now, {len(data) - 512} when"):
        list(read_shard(item, ReadSettings(4, False, Reach(s3.url))))
    assert len(list(read_shard({**item, "size": len(data)}, ReadSettings(4, False, Reach(s3.url))))) == 1


def test_local_shard_identity_is_size_and_mtime(tmp_path):
    from pipeline.shard_identity import identity_of

    path = tmp_path / "s.tar"
    path.write_bytes(b"a" * 10)
    first = identity_of(str(path))
    assert first.kind == "mtime_ns" and first.size == 10
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(1, int(first.version) + 1000))
    second = identity_of(str(path))
    assert second != first and first.changes_to(second).startswith("mtime_ns")


# ------------------------------------------------------------------------------------- 4. the lease


def _put_lease(s3, bucket: str, host: str, pid: int, age_s: float, owner: str = "f" * 32) -> None:
    body = {
        "owner": owner,
        "host": host,
        "pid": pid,
        "acquired_at": "2026-01-01T00:00:00+00:00",
        "heartbeat_at": time.time() - age_s,
        "timeout_s": 300.0,
    }
    s3.client().put_object(Bucket=bucket, Key="out/lease.json", Body=json.dumps(body).encode())


def test_a_second_driver_exits_at_once_naming_the_holder_and_touches_nothing(s3, ray_local, capsys):
    from jobs.cli import main

    bucket = s3.new_bucket("lease")
    url, output = f"s3://{bucket}/in/s-000.tar", f"s3://{bucket}/out"
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=_shard(2))
    _put_lease(s3, bucket, "other-host", 4242, age_s=5)
    # the live holder's in-flight unit: a second driver's orphan sweep would delete it
    s3.client().put_object(Bucket=bucket, Key="out/shards/s-000-x-00000.tar", Body=b"in flight")
    before = s3.list_keys(bucket, "out/")
    t0 = time.monotonic()
    rc = main(_argv(url, output, s3))
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - t0 < 30, err
    assert "is in use by driver ffffffff on host other-host, pid 4242" in err and "--lease-timeout" in err, err
    assert f"{output}/lease.json" in err
    assert s3.list_keys(bucket, "out/") == before

    # the holder went silent: once its heartbeat is older than the timeout, the next driver takes over
    _put_lease(s3, bucket, "other-host", 4242, age_s=120)
    assert main(_argv(url, output, s3, "--lease-timeout", "60")) == 0
    books(s3, output, {url: 2})
    assert "out/lease.json" not in s3.list_keys(bucket, "out/")  # released at the end


@pytest.mark.slow
def test_two_real_drivers_on_one_output_the_second_is_refused_and_the_first_finishes_exactly_once(
    s3, ray_local, capsys
):
    from jobs.cli import main

    bucket = s3.new_bucket("two")
    url, output = f"s3://{bucket}/in/s-000.tar", f"s3://{bucket}/out"
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=_shard(4))
    env = {**os.environ, **ray_local.env(), "MGIE_BATCH_FAULTS": "edit.sleep=2"}  # keeps driver A running
    first = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *_argv(url, output, s3)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while "out/run.json" not in s3.list_keys(bucket, "out/"):  # A holds the lease before it writes run.json
            assert first.poll() is None and time.monotonic() < deadline, "driver A ended or never started"
            time.sleep(0.5)
        rc = main(_argv(url, output, s3))
        err = capsys.readouterr().err
        assert rc == 2 and f"pid {first.pid}" in err and "is in use by driver" in err, err
        out, err_a = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err_a[-3000:]
    books(s3, output, {url: 4})


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(s3, ray_local):
    from pipeline.run import run_edit

    bucket = s3.new_bucket("dead")
    url, output = f"s3://{bucket}/in/s-000.tar", f"s3://{bucket}/out"
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=_shard(2))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a driver SIGKILLed here, say: its pid no longer exists
    _put_lease(s3, bucket, socket.gethostname(), gone.pid, age_s=1)
    run_edit(_config(url, output, s3))
    books(s3, output, {url: 2})


def test_local_lease_race_never_sees_a_half_written_lease(tmp_path):
    """A lease file must appear with its whole body: a racer that read it empty took it as stale and won too."""
    from pipeline.lease import Lease, LeaseHeld
    from pipeline.storage import Store

    for round_ in range(40):
        store = Store.open(str(tmp_path / f"out{round_}"))
        leases = [Lease(store, timeout_s=60) for _ in range(6)]
        start, won = threading.Barrier(len(leases)), []

        def race(lease, start=start, won=won):
            start.wait()
            try:
                lease.acquire()
                won.append(lease)
            except LeaseHeld:
                pass

        threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {round_}: {len(won)} drivers hold one output"
        assert sorted(os.listdir(tmp_path / f"out{round_}")) == ["lease.json"]  # no aside file left behind
        won[0].release()


def test_local_lease_without_hard_links_is_still_exclusive(tmp_path, monkeypatch):
    import errno

    from pipeline.lease import Lease, LeaseHeld
    from pipeline.storage import Store

    def refuse(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", dst)

    monkeypatch.setattr(os, "link", refuse)  # as exFAT and some network mounts answer
    store = Store.open(str(tmp_path / "out"))
    first, second = Lease(store, timeout_s=60), Lease(store, timeout_s=60)
    first.acquire()
    with pytest.raises(LeaseHeld):
        second.acquire()
    assert first.read().owner == first.holder.owner
    assert sorted(os.listdir(tmp_path / "out")) == ["lease.json"]
    first.release()
    second.acquire()
    second.release()


@pytest.mark.parametrize("where", ["s3", "local"])
def test_lease_create_is_exclusive_heartbeats_and_notices_a_takeover(s3, tmp_path, where):
    from pipeline.lease import Lease, LeaseHeld, LeaseLost
    from pipeline.storage import Store

    url = f"s3://{s3.new_bucket('lse')}/out" if where == "s3" else str(tmp_path / "out")
    store = Store.open(Reach(s3.url).at(url))
    leases = [Lease(store, timeout_s=60, heartbeat_s=0.2) for _ in range(4)]
    won, lost = [], []

    def race(lease):
        try:
            lease.acquire()
            won.append(lease)
        except LeaseHeld:
            lost.append(lease)

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 3  # conditional create: exactly one driver gets the output
    holder = won[0]
    first_beat = holder.read().heartbeat_at
    holder.start_heartbeat()
    time.sleep(0.7)
    assert holder.read().heartbeat_at > first_beat and holder.read().owner == holder.holder.owner
    holder.ensure_held()

    # another driver took the lease (it looked stale to it): the heartbeat notices, the holder must stop
    taker = Lease(store, timeout_s=60)
    stale = holder.read()
    holder._stop.set()
    holder._thread.join()
    assert taker._take_over(stale, taker._new_holder())
    holder._refresh()
    with pytest.raises(LeaseLost, match="taken over"):
        holder.ensure_held()
    holder.release()
    assert taker.read() is not None  # a lost holder never deletes the new holder's lease
    taker.holder = taker.read()
    taker.release()
    assert taker.read() is None


# ----------------------------------------------------------------------------------- 5. precision


def test_device_and_dtype_are_in_the_fingerprint_and_every_sample_and_a_change_is_refused(s3, ray_local, capsys):
    from jobs.cli import main
    from pipeline.shards import read_members
    from pipeline.storage import Store

    bucket = s3.new_bucket("prec")
    url, output = f"s3://{bucket}/in/s-000.tar", f"s3://{bucket}/out"
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=_shard(2))
    assert main(_argv(url, output, s3, "--device", "cpu")) == 0
    capsys.readouterr()
    store = Store.open(Reach(s3.url).at(output))
    run = json.loads(store.read_bytes("run.json"))
    assert run["identity"]["precision"] == {"device": "cpu", "dtype": "float32"}  # auto on cpu -> float32
    ledger = books(s3, output, {url: 2})
    members = read_members(store.read_bytes(ledger[0]["output_shard"]))
    assert json.loads(members[f"{ledger[0]['key']}.json"])["precision"] == {"device": "cpu", "dtype": "float32"}

    before = s3.list_keys(bucket, "out/")
    rc = main(_argv(url, output, s3, "--device", "cpu", "--dtype", "bfloat16"))
    err = capsys.readouterr().err
    assert rc == 2 and "precision.dtype: 'float32' -> 'bfloat16'" in err, err
    assert s3.list_keys(bucket, "out/") == before
