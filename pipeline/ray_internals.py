"""What the job reads from Ray beyond its public API, in one place: a Ray upgrade that moves either name
breaks tests/test_ray_internals.py, not a run.

    stats_actor()     Ray Data's stats actor (name, namespace): the per-stage counts of the progress line
    local_log_dir()   this driver's local Ray node's log folder, or None when attached to a cluster
"""

from __future__ import annotations


def stats_actor() -> tuple[str, str]:
    """(name, namespace) of Ray Data's stats actor."""
    from ray.data._internal.stats import STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE

    return STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE


def local_log_dir() -> str | None:
    """The log folder of the Ray node this process started, None when it attached to a running cluster."""
    import ray

    node = getattr(ray._private.worker.global_worker, "node", None)
    return node.get_logs_dir_path() if node is not None else None
