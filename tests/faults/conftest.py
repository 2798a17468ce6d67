"""Fixtures of the fault suite: a private cluster per test, a proxy in front of it, and
real runners pointed at either.

``private_cluster`` is in tests/conftest.py's ``DATABASE_FIXTURES``, so these tests are
marked ``db`` and stay out of the fast tier.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backy_gevent.client import Client
from backy_gevent.config import Settings
from backy_gevent.worker import Registry
from tests import workers
from tests.conftest import RunnerProcess, cli_env
from tests.faults.cluster import ClusterTemplate, PrivateCluster, server_binaries
from tests.faults.proxy import TcpProxy


@pytest.fixture(scope="session")
def cluster_template() -> Iterator[ClusterTemplate]:
    """One initdb per session; every private cluster starts as a copy of it."""
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip("the fault suite needs PostgreSQL's server binaries in"
                    " /usr/lib/postgresql/<version>/bin (Debian's postgresql package)")
    template = ClusterTemplate(bin_dir)
    yield template
    template.remove()


def make_client(dsn: str) -> Client:
    """A client of ``dsn`` that knows the test workers (the caller closes it)."""
    return Client(Settings(dsn=dsn), registry=Registry.from_classes(*workers.ALL))


@pytest.fixture
def private_cluster(cluster_template: ClusterTemplate, tmp_path: Path) -> Iterator[PrivateCluster]:
    """A running cluster of this test's own, with the jobs table and ``runs``. Its
    server log is kept as ``server.log`` in the test's tmp_path."""
    cluster = PrivateCluster(cluster_template)
    try:
        cluster.start()
        with make_client(cluster.dsn) as client:
            client.setup()
        cluster.execute(workers.RUNS_TABLE)
        cluster.execute(workers.STEADY_RUNS_COLUMNS)
        yield cluster
    finally:
        with contextlib.suppress(OSError):
            shutil.copy(cluster.log_path, tmp_path / "server.log")
        cluster.close()


@pytest.fixture
def proxy(private_cluster: PrivateCluster) -> Iterator[TcpProxy]:
    """A TCP proxy to the private cluster; ``proxy.dsn_for(private_cluster.dsn)``."""
    with TcpProxy(private_cluster.port) as tcp_proxy:
        yield tcp_proxy


class RunnerOn:
    """Starts real runners on a DSN (the cluster's, or the proxy's):
    ``runner_on(dsn, "--poll-interval", "0.2")``. Workers record their runs straight
    into the cluster (``record_dsn`` to change that), so a fault between a runner and
    its database does not also hit the bookkeeping. ``started`` lists every runner."""

    def __init__(self, cluster: PrivateCluster, log_dir: Path) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.started: list[RunnerProcess] = []

    def __call__(
        self,
        dsn: str,
        *args: str,
        record_dsn: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> RunnerProcess:
        environment = env or cli_env(dsn, BACKY_TEST_RECORD_DSN=record_dsn or self.cluster.dsn)
        process = RunnerProcess(
            dsn, list(args), self.log_dir / f"runner-{len(self.started)}.log", environment
        )
        self.started.append(process)
        if wait:
            process.wait_started()
        return process

    def assert_no_tracebacks(self) -> None:
        """No runner logged an unexpected exception (a fault is a logged warning)."""
        for process in self.started:
            assert "Traceback" not in process.output, process.output


@pytest.fixture
def runner_on(private_cluster: PrivateCluster, tmp_path: Path) -> Iterator[RunnerOn]:
    """A ``RunnerOn``; every runner it started is killed at the end."""
    factory = RunnerOn(private_cluster, tmp_path)
    yield factory
    for process in factory.started:
        process.stop()
