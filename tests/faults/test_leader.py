"""One runner at a time leads maintenance, and a new one takes over within 10 s when the
leader dies (kill -9) or loses the database (its path cut), as ``backy-gevent runners``
shows."""

from __future__ import annotations

import json
import time

from backy_gevent.runner.maintenance import BEAT_SECONDS, LEADER_LEASE_SECONDS
from tests.conftest import RunnerProcess, run_cli, wait_until
from tests.faults.cluster import PrivateCluster
from tests.faults.conftest import RunnerOn
from tests.faults.proxy import TcpProxy

ARGS = ("--poll-interval", "0.2", "--worker", "steady")
HANDOVER_WITHIN = 10.0


def leaders(dsn: str) -> list[int]:
    """The pids ``backy-gevent runners --json`` says lead (one, or none between two)."""
    listed = run_cli("runners", "--json", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    return [runner["pid"] for runner in json.loads(listed.stdout) if runner["leader"]]


def one_leader(dsn: str, among: list[RunnerProcess]) -> RunnerProcess:
    """The one runner of ``among`` that leads, once there is one (never two)."""
    wanted = {runner.process.pid: runner for runner in among}

    def leader() -> RunnerProcess | None:
        pids = leaders(dsn)
        assert len(pids) <= 1, f"two leaders at once: {pids}"
        return wanted.get(pids[0]) if pids else None

    found: RunnerProcess = wait_until(leader, 15, 0.2, what="a leader among the runners")
    return found


def test_one_leader_and_a_successor_within_10s_when_it_is_killed(
    private_cluster: PrivateCluster, runner_on: RunnerOn
) -> None:
    dsn = private_cluster.dsn
    runners = [runner_on(dsn, *ARGS) for _ in range(3)]
    leader = one_leader(dsn, runners)
    assert "leads maintenance" in leader.output
    others = [runner for runner in runners if runner is not leader]
    assert all("leads maintenance" not in runner.output for runner in others)
    leader.process.kill()
    killed = time.monotonic()
    successor = one_leader(dsn, others)
    took = time.monotonic() - killed
    print(f"\nleader killed: successor after {took:.1f}s"
          f" (lease {LEADER_LEASE_SECONDS:g}s + beat {BEAT_SECONDS:g}s)")
    assert took <= HANDOVER_WITHIN
    # The clean stop of the successor hands over at once.
    successor.signal(15)
    assert successor.wait(15) == 0
    stopped = time.monotonic()
    [last] = [runner for runner in others if runner is not successor]
    assert one_leader(dsn, [last]) is last
    print(f"leader stopped: successor after {time.monotonic() - stopped:.1f}s")
    assert time.monotonic() - stopped <= BEAT_SECONDS + 2


def test_a_leader_that_loses_the_database_is_replaced_within_10s(
    private_cluster: PrivateCluster, proxy: TcpProxy, runner_on: RunnerOn
) -> None:
    dsn = private_cluster.dsn
    cut_off = runner_on(proxy.dsn_for(dsn), *ARGS)  # first up: it leads
    assert one_leader(dsn, [cut_off]) is cut_off
    direct = [runner_on(dsn, *ARGS) for _ in range(2)]
    proxy.cut()
    cut = time.monotonic()
    successor = one_leader(dsn, direct)
    took = time.monotonic() - cut
    print(f"\nleader cut off: successor after {took:.1f}s")
    assert took <= HANDOVER_WITHIN
    proxy.restore()
    # Back, the old leader finds its lease taken and stays a follower.
    wait_until(lambda: "no longer leads maintenance" in cut_off.output, 20,
               what="the old leader to step down")
    assert leaders(dsn) == [successor.process.pid]
