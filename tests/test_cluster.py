"""`mgie-batch edit` on a simulated two-node Ray cluster: the job attaches through RAY_ADDRESS, its model
actors spread over both GPU nodes, and losing a node mid-run still ends exactly once after a rerun.

The cluster is `ray.cluster_utils.Cluster` on this machine: a head with no CPUs (as in infra/k8s and
infra/ray-cluster.yaml) and two worker nodes, each declaring CPUs, one GPU and host memory. No GPU exists:
Ray schedules on the declared counts and the tiny model runs on the CPU. With two GPUs in the cluster the
`auto` resources pick the 24 GB-per-GPU layout twice over, and with GPUs the `auto` actor layout is `fused`:
two actors of one GPU each, both model parts in each, which only fit by using both nodes. The driver is a
subprocess, exactly like a job submitted to a cluster.

One scenario, several assertions (a Ray cluster costs tens of seconds on two cores):
  run 1 (each edit unit held 1.5 s so the run can be caught mid-way) -> actors on both nodes, seen in the GCS
  actor table -> once some units are committed, one worker node is killed (no graceful shutdown) and a
  replacement joins, as an autoscaler would do -> run 1 ends or is given up -> run 2 = the same command
  -> every input row in the ledger exactly once, no orphan, summary balanced.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Eight one-unit shards: a shard is read as one Ray Data block, so many small shards let units finish (and
# commit) one after another instead of all at once. The demo rows include one corrupt image (an error row).
N_SHARDS, ROWS_PER_SHARD, UNIT_ROWS = 8, 2, 2
N_ROWS, N_UNITS = N_SHARDS * ROWS_PER_SHARD, N_SHARDS * ROWS_PER_SHARD // UNIT_ROWS
STAGE_ACTORS = ("MapWorker(Map(ExpressEditStage))",)  # the fused layout: the GPU default
WORKER_NODE = dict(num_cpus=4, num_gpus=1, memory=32 * 2**30, object_store_memory=100 * 2**20)


class TwoNodeCluster:
    """A head without CPUs and two GPU worker nodes, in a private Ray temp dir.

    The private temp dir (RAY_TMPDIR) keeps the cluster's address file away from /tmp/ray, where a plain
    `ray.init()` of another process on this machine would otherwise find it and attach to this cluster.
    """

    def __init__(self):
        from ray.cluster_utils import Cluster

        self.tmp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: unix socket paths are limited
        self._saved_tmpdir = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = self.tmp
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(
                num_cpus=0,
                include_dashboard=False,
                object_store_memory=100 * 2**20,
                # a lost node is declared dead after ~3 s instead of ~15 s (Ray's defaults: 3 s x 5 checks)
                _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
            ),
        )
        self.workers = [self.add_worker(), self.add_worker()]
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self):
        return self.cluster.add_node(**WORKER_NODE)

    def kill(self, node) -> None:
        """Lose a node: its raylet and workers are killed without a graceful shutdown."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def actors(self) -> list[dict]:
        """The GCS actor table: class, node and state of every actor the cluster has seen."""
        return list(self.cluster.global_state.actor_table(None).values())

    def alive_node_ids(self) -> set[str]:
        return {n["NodeID"] for n in self.cluster.global_state.node_table() if n["Alive"]}

    def close(self) -> None:
        # Node by node rather than Cluster.shutdown(), which also resets this process's internal-KV client
        # and would break a Ray session the test process holds (the `ray_local` fixture).
        import ray._common.utils

        for node in list(self.cluster.worker_nodes):
            self.cluster.remove_node(node, allow_graceful=False)
        if self.cluster.head_node is not None:
            self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)
        ray._common.utils.reset_ray_address()
        if self._saved_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = self._saved_tmpdir
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3):  # s3 first: the nodes' processes inherit AWS_ENDPOINT_URL and the keys
    c = TwoNodeCluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def job_inputs(s3):
    """Demo shards and the tiny model, both in the bucket: every node reads them over S3."""
    from mgie import MGIE
    from pipeline.dev.demo_data import write_demo_shards

    bucket = s3.new_bucket("cluster")
    write_demo_shards(
        f"s3://{bucket}/in",
        n_shards=N_SHARDS,
        rows_per_shard=ROWS_PER_SHARD,
        storage_options=s3.storage_options(),
        size=48,
    )
    MGIE.from_preset("tiny", seed=0).save_pretrained(f"s3://{bucket}/models/tiny", storage_options=s3.storage_options())
    return bucket


def _edit_cmd(bucket: str, output: str) -> list[str]:
    # the command of infra/k8s/rayjob-edit.yaml, on the tiny model and the local endpoint
    return [
        sys.executable,
        "-m",
        "jobs.cli",
        "edit",
        "--input",
        f"s3://{bucket}/in/demo-{{000..{N_SHARDS - 1:03d}}}.tar",
        "--output",
        f"s3://{bucket}/{output}",
        "--model",
        f"s3://{bucket}/models/tiny",
        "--unit-rows",
        str(UNIT_ROWS),
        "--no-progress",
        "--json",
        # the nodes declare GPUs that do not exist: the driver resolves the device once for the run (it
        # is part of the fingerprint), so say that the model runs on the CPU
        "--device",
        "cpu",
    ]


def _driver_env(cluster: TwoNodeCluster, faults: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    env.update(RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    if faults:
        env["MGIE_BATCH_FAULTS"] = faults
    return env


def _stage_actor_nodes(cluster: TwoNodeCluster) -> dict[str, set[str]]:
    """{stage actor class: node ids where an actor of it is or was alive}."""
    out: dict[str, set[str]] = {name: set() for name in STAGE_ACTORS}
    for a in cluster.actors():
        # an actor still waiting for resources has no node yet
        if a["ActorClassName"] in out and a["State"] == "ALIVE" and a["Address"]["NodeID"]:
            out[a["ActorClassName"]].add(a["Address"]["NodeID"])
    return out


@pytest.mark.slow
def test_edit_job_spreads_over_two_nodes_and_survives_losing_one(s3, cluster, job_inputs):
    bucket, output = job_inputs, "out-node-loss"
    workers_at_start = {n.node_id for n in cluster.workers}
    assert len(workers_at_start) == 2

    def commits() -> list[str]:
        return [k for k in s3.list_keys(bucket, f"{output}/commits/") if k.endswith(".json")]

    t0 = time.monotonic()
    phases: dict[str, float] = {}
    # ---- run 1: attach through RAY_ADDRESS; lose a node once some units are committed
    log1 = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        _edit_cmd(bucket, output),
        cwd=ROOT,
        env=_driver_env(cluster, "edit.sleep=1.5"),
        stdout=log1,
        stderr=subprocess.STDOUT,
        text=True,
    )
    placed: dict[str, set[str]] = {name: set() for name in STAGE_ACTORS}  # nodes seen running each stage
    committed_at_kill = None
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if committed_at_kill is None:
                for stage, nodes in _stage_actor_nodes(cluster).items():
                    placed[stage] |= nodes & workers_at_start
            spread = all(placed.values()) and set().union(*placed.values()) == workers_at_start
            n = len(commits())
            if committed_at_kill is None and spread and n >= 1:
                committed_at_kill = n
                phases["node_killed"] = round(time.monotonic() - t0, 1)
                cluster.kill(cluster.workers[1])
                cluster.add_worker()  # the replacement an autoscaler or KubeRay would start
                deadline = time.monotonic() + 120  # then give run 1 two minutes to finish or hang
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()  # given up: as good as a crashed driver; the rerun must cope
        proc.wait(timeout=30)
        phases["run1_ended"] = round(time.monotonic() - t0, 1)
        log1.seek(0)
        run1_log = log1.read()[-4000:]

    # the job's model actors ran on both worker nodes (Ray's GCS actor table)
    for stage, nodes in placed.items():
        assert nodes, f"no {stage} actor was ever placed:\n{run1_log}"
    assert set().union(*placed.values()) >= workers_at_start, (placed, workers_at_start, run1_log)
    # the node was lost in the middle of the run: some units committed, not all
    assert committed_at_kill is not None, f"run 1 ended before a node could be killed:\n{run1_log}"
    assert 1 <= committed_at_kill < N_UNITS, committed_at_kill

    # ---- run 2: the same command, on the cluster as it is now
    run2 = subprocess.run(
        _edit_cmd(bucket, output), cwd=ROOT, env=_driver_env(cluster), capture_output=True, text=True, timeout=300
    )
    phases["run2_ended"] = round(time.monotonic() - t0, 1)
    assert run2.returncode == 0, run2.stdout[-3000:] + run2.stderr[-3000:]
    summary = json.loads(run2.stdout[run2.stdout.index("{") :])

    # exactly once: every input row once in the ledger, and nothing else
    ledger_keys = [k for k in s3.list_keys(bucket, f"{output}/ledger/") if k.endswith(".parquet")]
    commit_keys = commits()
    assert len(commit_keys) == N_UNITS
    rows = []
    for key in ledger_keys:
        rows += _read_parquet(s3, bucket, key).select(["key", "status"]).to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == N_ROWS and len(set(keys)) == N_ROWS, sorted(keys)
    assert sum(r["status"] == "error" for r in rows) == 1  # the corrupt demo image, as an error row
    # no orphans: each ledger file and tar is named by exactly one commit record
    named = set()
    for key in commit_keys:
        rec = json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
        named |= {f"{output}/{p}" for p in rec["files"].values() if p}
    stored = set(ledger_keys) | {k for k in s3.list_keys(bucket, f"{output}/shards/") if k.endswith(".tar")}
    assert stored == named, (sorted(stored - named), sorted(named - stored))
    # the summary of the rerun balances, and the rerun did reuse run 1's commits
    assert summary["read"] == N_ROWS == summary["ok"] + summary["error"] + summary["skipped"]
    assert summary["skipped"] >= committed_at_kill * UNIT_ROWS
    assert summary["ledger_totals"] == {"rows": N_ROWS, "ok": N_ROWS - 1, "error": 1, "units": N_UNITS}
    assert summary["units_skipped"] + summary["units_committed"] == N_UNITS
    print(
        f"run 1 exit {proc.returncode}, {committed_at_kill} of {N_UNITS} units committed when the node was "
        f"lost; run 2 committed {summary['units_committed']}; phases (s): {phases}"
    )


def _read_parquet(s3, bucket: str, key: str):
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()))
