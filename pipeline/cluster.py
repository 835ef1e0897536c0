"""The Ray cluster a job runs on: attach to one (RAY_ADDRESS, a `ray start` cluster) or start a local one.

    cluster = RunCluster()
    cluster.gpus()     # attaches (or starts Ray) on first need and says so in one status line
    cluster.ensure()   # later calls in the same run stay quiet

A run may need Ray for two reasons (the precision check asks how many GPUs the cluster has; the plan runs on
it); `RunCluster` makes both one attachment and one status line. docs/deploy.md has the cluster setups.
"""

from __future__ import annotations

import os

from pipeline import terminal
from pipeline.ray_internals import local_log_dir


def ensure_ray(num_cpus: int | None = None) -> None:
    """Attach to RAY_ADDRESS / a running `ray start` cluster, or start a local instance (docs/deploy.md)."""
    import ray

    if ray.is_initialized():
        terminal.status("using the Ray instance this process already runs")
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance; no token to manage
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    terminal.status(
        f"attaching to Ray at {address}" if address else f"starting Ray (local, {num_cpus or os.cpu_count()} CPUs)"
    )
    # workers' own output stays in the session's log files unless --verbose asked for it here
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=terminal.verbose(), configure_logging=False)
    if not terminal.verbose():
        logs = local_log_dir()  # None when attached to a cluster
        if logs is not None:
            terminal.status(f"Ray worker logs: {logs}")


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


class RunCluster:
    """Ray as one run sees it: reached on first need, at most once (one status line), never when a run has
    nothing to compute (every shard already committed)."""

    def __init__(self) -> None:
        self._reached = False

    def ensure(self) -> None:
        if not self._reached:
            ensure_ray()  # looked up at call time: tests replace it to prove a run never reaches Ray
            self._reached = True

    def gpus(self) -> float:
        self.ensure()
        return cluster_gpus()
