"""Settings refused before Ray starts and before anything is written; an empty shard; the exit status when
every row failed. Real S3 endpoint, local Ray, the tiny model."""

from __future__ import annotations

import pytest

from pipeline.location import Reach
from tests.badinputs import good_jpeg, raw_tar


def _argv(input_url: str, output: str, s3, *extra: str) -> list[str]:
    return [
        "edit",
        "--model",
        "tiny",
        "--input",
        input_url,
        "--output",
        output,
        "--unit-rows",
        "2",
        "--resources",
        "cpu",
        "--endpoint-url",
        s3.url,
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the job starts (or attaches to) Ray."""
    from pipeline import cluster

    def refuse(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster, "ensure_ray", refuse)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--resolution", "0"), "--resolution must be a positive multiple of 8"),
        (("--resolution", "-8"), "--resolution must be a positive multiple of 8"),
        (("--resolution", "7"), "got 7"),
        (("--resolution", "33"), "got 33"),
        (("--device", "cuda"), "--device cuda with --resources cpu: that preset gives the model stages no GPU"),
        (("--lease-timeout", "0"), "--lease-timeout must be > 0"),
    ],
    ids=["res0", "res-8", "res7", "res33", "cuda-on-cpu", "lease0"],
)
def test_bad_settings_are_refused_before_ray_and_before_run_json(s3, no_ray, capsys, extra, needle):
    from jobs.cli import main

    bucket = s3.new_bucket("set")
    s3.client().put_object(
        Bucket=bucket, Key="in/s-000.tar", Body=raw_tar([("a.jpg", good_jpeg()), ("a.txt", b"make it brighter")])
    )
    rc = main(_argv(f"s3://{bucket}/in/s-000.tar", f"s3://{bucket}/out", s3, *extra))
    err = capsys.readouterr().err
    # one line from the command (pytest's captured streams may carry unrelated logging noise around it)
    ours = [line for line in err.splitlines() if line.startswith("mgie-batch edit:")]
    assert rc == 2 and len(ours) == 1 and needle in ours[0], err
    assert s3.list_keys(bucket, "out/") == []


def test_a_photo_given_as_input_is_refused_naming_it(s3, no_ray, capsys):
    from jobs.cli import main

    bucket = s3.new_bucket("jpg")
    s3.client().put_object(Bucket=bucket, Key="in/photo.jpg", Body=good_jpeg())
    rc = main(_argv(f"s3://{bucket}/in/photo.jpg", f"s3://{bucket}/out", s3))
    err = capsys.readouterr().err
    assert rc == 2 and f"--input s3://{bucket}/in/photo.jpg: not a .tar shard" in err, err
    assert s3.list_keys(bucket, "out/") == []


def test_a_valid_empty_tar_is_one_complete_shard_of_zero_rows(s3, ray_local, monkeypatch):
    from pipeline import cluster
    from pipeline.ledger import load_state, read_ledger
    from pipeline.run import run_edit
    from pipeline.storage import Store
    from tests.test_reliability_storage import _config

    bucket = s3.new_bucket("empty")
    s3.client().put_object(Bucket=bucket, Key="in/s-000.tar", Body=raw_tar([]))
    s3.client().put_object(
        Bucket=bucket, Key="in/s-001.tar", Body=raw_tar([("a.jpg", good_jpeg()), ("a.txt", b"make it brighter")])
    )
    pattern, output = f"s3://{bucket}/in/s-{{000..001}}.tar", f"s3://{bucket}/out"
    summary = run_edit(_config(pattern, output, s3))
    assert (summary["read"], summary["ok"], summary["error"], summary["units_committed"]) == (1, 1, 0, 2)
    state = load_state(Store.open(Reach(s3.url).at(output)))
    empty = [rec for rec in state.commits.values() if rec["source_shard"].endswith("s-000.tar")]
    assert len(empty) == 1 and empty[0]["n_rows"] == 0 and empty[0]["last"] and empty[0]["unreadable_tail"] is None
    assert [r["key"] for r in read_ledger(Reach(s3.url).at(output)).to_pylist()] == ["a"]

    # both shards complete: the rerun does not even start Ray
    monkeypatch.setattr(cluster, "ensure_ray", lambda *a, **k: (_ for _ in ()).throw(AssertionError("Ray started")))
    again = run_edit(_config(pattern, output, s3))
    assert (again["read"], again["skipped"], again["units_skipped"], again["units_committed"]) == (1, 1, 2, 0)


def test_exit_status_when_every_row_failed_and_when_some_did(s3, ray_local, capsys):
    from jobs.cli import main

    bucket = s3.new_bucket("fail")
    client = s3.client()
    client.put_object(
        Bucket=bucket, Key="bad/s-000.tar", Body=raw_tar([("a.jpg", good_jpeg()), ("b.jpg", good_jpeg(seed=2))])
    )  # no instructions
    client.put_object(
        Bucket=bucket,
        Key="some/s-000.tar",
        Body=raw_tar([("a.jpg", good_jpeg()), ("a.txt", b"make it brighter"), ("b.jpg", good_jpeg())]),
    )

    rc = main(_argv(f"s3://{bucket}/bad/s-000.tar", f"s3://{bucket}/out-bad", s3))
    out, err = capsys.readouterr()
    assert rc == 4, err
    assert "every row this run processed failed (2 error rows)" in err and "rows read  2 = ok 0 + error 2" in out

    rc = main(_argv(f"s3://{bucket}/some/s-000.tar", f"s3://{bucket}/out-some", s3))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "1 of 2 rows failed (exit status 0: errors are data)" in out, out


def test_a_full_disk_leaves_no_temporary_and_exits_3_in_one_line(tmp_path, no_ray, monkeypatch, capsys):
    """ENOSPC on the output (injected after the temp file has its bytes): exit 3, one line, no .tmp- file."""
    from jobs.cli import main
    from pipeline.storage import OutputStoreFull, Store

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s-000.tar").write_bytes(raw_tar([("a.jpg", good_jpeg()), ("a.txt", b"make it brighter")]))
    out = tmp_path / "out"
    monkeypatch.setenv("MGIE_BATCH_FAULTS", "store.enospc=1")  # the driver's first atomic write
    code = main(["edit", "--input", str(tmp_path / "in"), "--output", str(out), "--resources", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "the output store is full" in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1
    assert [p.name for p in out.rglob("*") if p.name.startswith(".tmp-")] == []

    from pipeline import faults

    faults.configure("store.enospc=1")
    monkeypatch.setattr(faults, "_writes", 0)
    store = Store(str(tmp_path / "direct"), {})
    with pytest.raises(OutputStoreFull, match="no space left writing a/b.json"):
        store.write_atomic("a/b.json", b"{}")
    assert list((tmp_path / "direct").rglob("*")) == [tmp_path / "direct" / "a"]  # the folder, no temporary
    faults.configure("")
