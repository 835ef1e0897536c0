"""Security properties of the edit job: nothing we load runs pickled code, member names cannot leave the
output folder, an output prefix never overlaps its input, and credentials never reach logs or outputs."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.location import Reach
from tests.badinputs import PickledCode, good_jpeg, raw_tar

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("mgie", "pipeline", "jobs", "bench", "infra")

# Calls that may run code from the bytes they read, unless told not to.
# The one exception, with its reason: pipeline/rows.py unpickles the `payload` column that the read stage
# itself pickled a moment earlier inside the same job (samples travelling between Ray stages, as Ray's own
# object store does); it never unpickles anything read from storage or given by a user.
ALLOWED = {("pipeline/rows.py", "unpack", "pickle.loads")}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, call) for every call in `source` that can execute pickled code."""
    tree = ast.parse(source, filename)
    found = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                call = _dotted(child.func)
                tail = call.rsplit(".", 1)[-1]
                bad = None
                if call == "torch.load" and not _is_true(_kw(child, "weights_only")):
                    bad = "torch.load without weights_only=True"
                elif call.split(".")[0] in (
                    "pickle",
                    "cPickle",
                    "_pickle",
                    "dill",
                    "cloudpickle",
                    "joblib",
                ) and tail in ("load", "loads", "Unpickler"):
                    bad = call
                elif call.split(".")[0] in ("np", "numpy") and tail == "load" and _is_true(_kw(child, "allow_pickle")):
                    bad = "np.load(allow_pickle=True)"
                elif call in ("yaml.unsafe_load", "yaml.full_load"):
                    bad = call
                elif call == "yaml.load" and "Safe" not in ast.unparse(_kw(child, "Loader") or ast.Constant("")):
                    bad = "yaml.load without a safe loader"
                elif call in ("torch.jit.load", "pandas.read_pickle", "pd.read_pickle"):
                    bad = call
                if bad:
                    found.append((child.lineno, func, bad))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_the_scanner_finds_each_unsafe_form():
    src = (
        "import torch, pickle, numpy as np, yaml\n"
        "def f(p):\n"
        "    torch.load(p)\n"
        "    torch.load(p, weights_only=False)\n"
        "    pickle.loads(p)\n"
        "    np.load(p, allow_pickle=True)\n"
        "    yaml.load(p, Loader=yaml.Loader)\n"
        "    torch.load(p, map_location='cpu', weights_only=True)\n"
        "    np.load(p)\n"
        "    yaml.load(p, Loader=yaml.SafeLoader)\n"
    )
    assert [line for line, _, _ in unsafe_loads(src, "x.py")] == [3, 4, 5, 6, 7]


def test_no_pickle_anywhere_we_load():
    found = []
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, func, call in unsafe_loads(path.read_text(), rel):
                if (rel, func, call.split(" ")[0]) not in ALLOWED:
                    found.append(f"{rel}:{line} in {func}(): {call}")
    assert not found, "calls that can run pickled code:\n" + "\n".join(found)


def test_metric_weights_with_pickled_code_are_refused(tmp_path):
    import torch

    from pipeline.evaluation.metrics import load_alexnet_features

    ran = tmp_path / "ran"
    torch.save({"features.0.weight": PickledCode(ran)}, tmp_path / "alexnet.pth")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_alexnet_features(str(tmp_path / "alexnet.pth"))
    assert not ran.exists()


# ---------------------------------------------------------------------------------------- member names


@pytest.mark.parametrize("name", ["../escape", "/abs/evil", "a/../../escape", "./../escape", "d/../x"])
def test_a_member_name_that_leaves_the_folder_is_refused(tmp_path, name):
    from pipeline import rows
    from pipeline.stages import ReadSettings, read_shard

    shard = tmp_path / "s.tar"
    shard.write_bytes(
        raw_tar([("ok.jpg", good_jpeg()), ("ok.txt", b"x"), (f"{name}.jpg", good_jpeg()), (f"{name}.txt", b"x")])
    )
    units = list(read_shard({"shard": str(shard), "committed": "{}"}, ReadSettings(8, False, Reach())))
    samples = rows.unpack(units[0]["payload"])
    assert [s["status"] for s in samples] == [rows.PENDING, rows.ERROR]
    assert samples[1]["error_stage"] == "read" and "unsafe member name" in samples[1]["error"]
    assert "fields" not in samples[1]  # its bytes are dropped, never passed on


# ------------------------------------------------------------------------------------- output location


@pytest.fixture(scope="module")
def input_bucket(s3):
    bucket = s3.new_bucket("sec")
    s3.client().put_object(
        Bucket=bucket, Key="in/shard-000.tar", Body=raw_tar([("a.jpg", good_jpeg()), ("a.txt", b"make it brighter")])
    )
    return bucket


@pytest.mark.parametrize("output", ["in", "in/", "in/edits/run1", "in/shard-000.tar.out"])
def test_output_equal_to_or_inside_an_input_folder_is_refused(s3, input_bucket, output):
    from pipeline.config import EditConfig
    from pipeline.run import run_edit
    from pipeline.storage import OutputInsideInput

    # a folder is read whole, so a later run over it would read this run's tars; a glob that reaches the
    # output's unit folders likewise
    for spec, needle in (("in/", "input folder"), ("in", "input folder"), ("in/**/*.tar", "matches the files")):
        cfg = EditConfig.of(
            input=f"s3://{input_bucket}/{spec}",
            output=f"s3://{input_bucket}/{output}",
            endpoint_url=s3.url,
            progress=False,
        )
        with pytest.raises(OutputInsideInput, match=needle):
            run_edit(cfg)
    assert s3.list_keys(input_bucket) == ["in/shard-000.tar"]  # nothing written


def test_the_command_line_refuses_it_with_a_clear_message(s3, input_bucket, capsys):
    from jobs.cli import main

    rc = main(
        [
            "edit",
            "--model",
            "tiny",
            "--input",
            f"s3://{input_bucket}/in/",
            "--output",
            f"s3://{input_bucket}/in/out",
            "--endpoint-url",
            s3.url,
            "--no-progress",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "refused" in err and "inside the input folder" in err and "Traceback" not in err
    assert s3.list_keys(input_bucket) == ["in/shard-000.tar"]


def test_reading_an_output_folder_back_into_the_same_output_is_refused(s3, input_bucket):
    from pipeline.config import EditConfig
    from pipeline.run import run_edit
    from pipeline.storage import OutputInsideInput

    s3.client().put_object(Bucket=input_bucket, Key="runs/r1/shards/u-00000.tar", Body=b"")
    cfg = EditConfig.of(
        input=f"s3://{input_bucket}/runs/r1/shards/",
        output=f"s3://{input_bucket}/runs/r1",
        endpoint_url=s3.url,
        progress=False,
    )
    with pytest.raises(OutputInsideInput, match="output folders"):
        run_edit(cfg)


def test_sibling_prefixes_are_not_confused(s3, input_bucket):
    from pipeline.storage import check_output_outside_inputs

    # s3://b/in-edits shares a string prefix with s3://b/in but is another folder
    check_output_outside_inputs(
        f"s3://{input_bucket}/in/", [f"s3://{input_bucket}/in/shard-000.tar"], f"s3://{input_bucket}/in-edits"
    )
    check_output_outside_inputs(f"s3://{input_bucket}/in/shard-000.tar", [], f"s3://{input_bucket}/edits/in")


# ------------------------------------------------------------------------------------------ credentials

SENTINEL_KEY_ID = "AKIASENTINEL7Q3XZ9"
SENTINEL_SECRET = "sentinel-secret-9f8e7d6c5b4a"  # noqa: S105 - a marker, not a credential
SECRET_PARTS = (SENTINEL_SECRET, SENTINEL_KEY_ID, SENTINEL_SECRET[-12:])


def _leaks(texts: dict[str, str]) -> list[str]:
    """'where: part' for every piece of the sentinel key pair found in any of `texts`."""
    return [f"{where}: {part!r}" for where, text in texts.items() for part in SECRET_PARTS if part in text]


@pytest.mark.slow
def test_credentials_never_reach_logs_run_record_or_ledger(s3, ray_local, input_bucket, tmp_path):
    """The driver runs with a sentinel key pair (the S3 endpoint accepts any); afterwards no byte of the
    secret may appear in its output, its log, the run record, the summary, commit records, ledger or tars."""
    out = f"s3://{input_bucket}/edits/sentinel"
    env = {
        **os.environ,
        **ray_local.env(),
        "AWS_ACCESS_KEY_ID": SENTINEL_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SENTINEL_SECRET,
        "PYTHONPATH": str(ROOT),
    }
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--model",
        "tiny",
        "--input",
        f"s3://{input_bucket}/in/shard-000.tar",
        "--output",
        out,
        "--endpoint-url",
        s3.url,
        "--resources",
        "cpu",
        "--no-progress",
        "--json",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["ok"] == 1 and summary["error"] == 0

    texts = {"stdout": done.stdout, "stderr": done.stderr}
    log = re.search(r"logs go to (\S+\.log)", done.stderr)  # the driver's routed log lines (pipeline.terminal)
    assert log, done.stderr[-3000:]
    texts[log.group(1)] = Path(log.group(1)).read_text(encoding="latin-1")
    client = s3.client()
    keys = s3.list_keys(input_bucket, "edits/sentinel/")
    assert any(k.endswith("run.json") for k in keys) and any(k.endswith(".parquet") for k in keys)
    for key in keys:
        texts[key] = client.get_object(Bucket=input_bucket, Key=key)["Body"].read().decode("latin-1")
    # the Ray session's logs (driver and workers of this instance)
    for path in Path(ray_local.temp_dir).rglob("*"):
        if path.is_file() and path.stat().st_size < 50 * 2**20:
            try:
                texts[str(path)] = path.read_bytes().decode("latin-1")
            except OSError:
                continue
    leaks = _leaks(texts)
    assert not leaks, "credentials leaked:\n" + "\n".join(leaks)

    # the check can fail: a process started with the same environment resolves the sentinel pair through the
    # SDK's own credential chain (what the job's clients use), and when it prints it the same scan flags it
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, boto3; c = boto3.Session().get_credentials(); "
            "print('secret', c.secret_key); print('key id', c.access_key, file=sys.stderr)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert sorted(_leaks({"stdout": probe.stdout, "stderr": probe.stderr})) == sorted(
        [f"stdout: {SENTINEL_SECRET!r}", f"stdout: {SENTINEL_SECRET[-12:]!r}", f"stderr: {SENTINEL_KEY_ID!r}"]
    )
    assert '"run_fingerprint"' in texts["edits/sentinel/run.json"]  # and the record is really read
