"""A Ray cluster lost mid-training: its own loopback cluster, after test_ray_jobs.py's has ended.

Two clusters on one machine at once share the ports Ray Client gives its per-connection servers (23000 on), so
this test has a module of its own: pytest ends test_ray_jobs.py's module cluster before it starts this one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deconv.jobs import JobManager
from tests.test_ray_jobs import LONG_TRAIN, SMALL_TRAIN, LocalCluster, submit, wait_for


def test_a_cluster_lost_mid_training_fails_its_job_and_the_next_training_runs_here(
        tmp_path: Path, cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECONV_RAY_CPUS", "1")
    doomed = LocalCluster(1, {"DECONV_DATA_DIR": str(cifar_dir), "TF_CPP_MIN_LOG_LEVEL": "2"})
    monkeypatch.setenv("RAY_CLIENT_RECONNECT_GRACE_PERIOD", "3")  # the app's side: Ray Client waits 30 s by default
    manager = JobManager(tmp_path / "runs" / ".jobs", max_jobs=1, warm=False, poll_seconds=0.1,
                         backend=doomed.address)
    try:
        assert manager.cluster is not None, manager.notice
        a = submit(manager, "a", LONG_TRAIN)
        wait_for(lambda: a.newest("batch") is not None)
        doomed.close()  # the head node and every process of the cluster are gone
        wait_for(lambda: not a.active, timeout=120)
        assert a.state == "error" and f"the connection to the Ray cluster at {doomed.address} was lost" in a.message
        wait_for(lambda: manager.cluster is None, timeout=60)
        assert doomed.address in manager.notice and manager.max_jobs == 1
        b = submit(manager, "b", SMALL_TRAIN)
        wait_for(lambda: not b.active)
        assert b.state == "finished" and "trained on this server because" in b.message
    finally:
        manager.shutdown()
        doomed.close()
