"""The two things the job reads from Ray's private modules still exist in the installed Ray: an upgrade
that moves them fails here, by name, instead of silently losing the progress counts or the log line."""

from __future__ import annotations

import ray

from pipeline.ray_internals import local_log_dir, stats_actor


def test_ray_data_stats_actor_is_where_the_progress_line_looks():
    name, namespace = stats_actor()
    assert isinstance(name, str) and name and isinstance(namespace, str) and namespace


def test_a_local_ray_node_names_its_log_folder(ray_local):
    assert ray.is_initialized()
    logs = local_log_dir()
    assert logs is not None and "session" in logs
