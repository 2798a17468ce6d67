"""The network between a runner and its database goes silent, holds replies, or is cut.

A runner reaches its private cluster through the TCP proxy; the test's own bookkeeping
(and, where there is one, a second runner) goes straight to the cluster. A silent path
must be noticed (log, /healthz) within 15 s, dropped and replaced when it returns; a
stop must never hang on it; and a claim whose reply arrives after its lease must not
start the job another runner has rescued and run meanwhile.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from tests import workers
from tests.acceptance.scraping import free_port, get
from tests.conftest import wait_until
from tests.faults import ledger
from tests.faults.cluster import PrivateCluster
from tests.faults.conftest import RunnerOn, make_client
from tests.faults.proxy import TcpProxy

POLL = 0.2
#: README: a runner whose database goes silent says so within database_timeout (10 s)
#: plus poll_interval; the issue asks for 15 s.
NOTICED_WITHIN = 15.0


def enqueue(dsn: str, count: int, worker: Any = workers.Steady, **args: Any) -> list[int]:
    with make_client(dsn) as client:
        return [job.id for job in client.enqueue_many(worker, [dict(args)] * count)]


def healthz(port: int) -> tuple[int, str]:
    return get(f"http://127.0.0.1:{port}/healthz", timeout=2.0)


def test_a_silent_database_is_noticed_dropped_and_recovered_from(
    private_cluster: PrivateCluster, proxy: TcpProxy, runner_on: RunnerOn
) -> None:
    dsn = private_cluster.dsn
    port = free_port()
    runner = runner_on(proxy.dsn_for(dsn), "--poll-interval", str(POLL), "--worker", "steady",
                       "--metrics-port", str(port))
    ids = enqueue(dsn, 50)
    wait_until(lambda: healthz(port)[0] == 200 and ledger.read_runs(dsn), 10,
               what="the runner to work")
    began = ledger.now()
    proxy.stall()
    stalled = time.monotonic()
    ids += enqueue(dsn, 200)  # work waits for the runner meanwhile
    wait_until(lambda: healthz(port)[0] == 503, NOTICED_WITHIN + 5, 0.2,
               what="/healthz to say the database is unreachable")
    noticed = time.monotonic() - stalled
    _, body = healthz(port)
    assert "database unreachable" in body and "sent nothing" in body, body
    assert "database error (the database sent nothing for 10s)" in runner.output
    print(f"\nsilence noticed after {noticed:.1f}s (bound {NOTICED_WITHIN:g}s)")
    assert noticed <= NOTICED_WITHIN
    proxy.resume()
    window = (began, ledger.now())
    resumed = time.monotonic()
    wait_until(lambda: healthz(port)[0] == 200, 20, 0.2, what="/healthz to recover")
    wait_until(lambda: not private_cluster.execute(
        "SELECT 1 FROM jobs WHERE state IN ('available', 'running') LIMIT 1"), 60, 0.2,
        what="every job to be done")
    print(f"recovered {time.monotonic() - resumed:.1f}s after the path came back")
    # Runs the stall cut short ran again: their leases ran out while it lasted.
    summary = ledger.check(dsn, ids, excused=ledger.outage([window], lease=2.0))
    print(f"silence: {summary}")
    assert runner.process.poll() is None


def test_stops_are_bounded_whatever_the_database_does(
    private_cluster: PrivateCluster, proxy: TcpProxy, runner_on: RunnerOn
) -> None:
    dsn = private_cluster.dsn
    args = ("--poll-interval", str(POLL), "--worker", "steady", "--shutdown-timeout", "3")
    warm = runner_on(proxy.dsn_for(dsn), *args)
    cold = runner_on(proxy.dsn_for(dsn), *args)
    # Long jobs, so that both runners hold some when the path goes silent.
    enqueue(dsn, 20, seconds=30)
    wait_until(lambda: len(ledger.read_runs(dsn)) >= 10, 10, what="jobs to start")
    proxy.stall()
    time.sleep(0.5)  # the stall holds whatever the runners just sent
    signalled = time.monotonic()
    warm.signal(signal.SIGTERM)
    cold.signal(signal.SIGTERM)
    time.sleep(0.3)
    cold_at = time.monotonic()
    cold.signal(signal.SIGTERM)
    assert cold.wait(5) == 0, cold.output
    cold_took = time.monotonic() - cold_at
    assert warm.wait(3 + 5 + 2) == 0, warm.output
    warm_took = time.monotonic() - signalled
    print(f"\nduring a stall: a second SIGTERM ended the runner in {cold_took:.1f}s,"
          f" a warm stop with shutdown_timeout 3 in {warm_took:.1f}s")
    assert cold_took <= 2.0
    assert warm_took <= 3 + 5
    proxy.resume()


def test_a_claim_whose_reply_comes_after_its_lease_is_not_started(
    private_cluster: PrivateCluster, proxy: TcpProxy, runner_on: RunnerOn
) -> None:
    dsn = private_cluster.dsn
    # The leader of maintenance goes direct, so that the late runner is a follower whose
    # connections are idle but for a claim every 10 polls (a leader's frequent rounds
    # would have their answers held too).
    runner_on(dsn, "--poll-interval", str(POLL), "--worker", "record")
    # One round trip per claim (a first PREPARE on a connection would be a second one,
    # and its answer held too).
    late = runner_on(proxy.dsn_for(dsn), "--poll-interval", str(POLL), "--worker", "sleep",
                     "--prepare-statements", "false")
    # Every connection made (a handshake's answers would be held too), and a claim or two.
    wait_until(lambda: private_cluster.execute(
        "SELECT count(*) >= 2 FROM pg_stat_activity WHERE application_name LIKE %s",
        "backy-gevent %")[0][0], 10, what="the late runner's connections")
    time.sleep(0.5)
    proxy.stall()
    time.sleep(0.5)  # the late runner's next claim waits in the proxy
    [job_id] = enqueue(dsn, 1, workers.Sleep, seconds=0.1)
    proxy.hold_replies()  # that claim reaches the server and takes the job; its answer waits
    wait_until(lambda: private_cluster.execute(
        "SELECT runner_id FROM jobs WHERE id = %s AND state = 'running'", job_id), 10,
        what="the held runner's claim to take the job")
    # Another runner rescues the job once its lease (max_runtime 1 + requeue_delay 1)
    # has run out, and runs it.
    other = runner_on(dsn, "--poll-interval", str(POLL), "--worker", "sleep")
    wait_until(lambda: any(run.finished_at for run in ledger.read_runs(dsn)), 15,
               what="the other runner to run the job")
    proxy.resume()  # the held reply arrives now, long after the lease
    wait_until(lambda: "handed back, not started" in late.output, 10,
               what="the late runner to give the job back unstarted")
    time.sleep(0.5)
    runs = [run for run in ledger.read_runs(dsn) if run.job_id == job_id]
    assert [run.pid for run in runs] == [other.process.pid], runs  # ran once, elsewhere
    assert late.process.poll() is None and other.process.poll() is None


def test_a_cut_network_is_survived_without_a_lost_job(
    private_cluster: PrivateCluster, proxy: TcpProxy, runner_on: RunnerOn
) -> None:
    dsn = private_cluster.dsn
    cut_off = runner_on(proxy.dsn_for(dsn), "--poll-interval", str(POLL), "--worker", "steady")
    direct = runner_on(dsn, "--poll-interval", str(POLL), "--worker", "steady")
    ids = enqueue(dsn, 2000, seconds=0.05)
    wait_until(lambda: len(ledger.read_runs(dsn)) >= 200, 30, what="the drain to be under way")
    windows = []
    for _ in range(2):
        began = ledger.now()
        proxy.cut()
        time.sleep(3.0)  # longer than a lease: the direct runner rescues what was cut
        proxy.restore()
        windows.append((began, ledger.now()))
        time.sleep(1.0)
    wait_until(lambda: not private_cluster.execute(
        "SELECT 1 FROM jobs WHERE state IN ('available', 'running') LIMIT 1"), 120, 0.2,
        what="every job to be done")
    summary = ledger.check(dsn, ids, excused=ledger.outage(windows, lease=2.0))
    print(f"\ncut twice for 3 s: {summary}")
    assert cut_off.process.poll() is None and direct.process.poll() is None


def test_sigterm_and_double_sigterm_under_load_lose_nothing(
    private_cluster: PrivateCluster, runner_on: RunnerOn
) -> None:
    dsn = private_cluster.dsn
    args = ("--poll-interval", str(POLL), "--worker", "steady", "--shutdown-timeout", "0.5")
    survivor = runner_on(dsn, *args)
    ids = enqueue(dsn, 400, seconds=0.8)  # long enough that a stop finds some running
    stops: dict[int, Any] = {}
    for second_signal in (False, True, False, True):
        stopped = runner_on(dsn, *args)
        wait_until(lambda p=stopped.process.pid: any(
            run.pid == p for run in ledger.read_runs(dsn)), 10, what="it to take jobs")
        stopped.signal(signal.SIGTERM)
        if second_signal:
            time.sleep(0.1)
            stopped.signal(signal.SIGTERM)
        assert stopped.wait(10) == 0, stopped.output
        stops[stopped.process.pid] = ledger.now()
    wait_until(lambda: not private_cluster.execute(
        "SELECT 1 FROM jobs WHERE state IN ('available', 'running') LIMIT 1"), 120, 0.2,
        what="every job to be done")
    # A stopped runner's unfinished attempts were handed back (not counted) and ran again.
    summary = ledger.check(dsn, ids, excused=ledger.killed(stops))
    print(f"\nfour runners stopped under load (two with a second SIGTERM): {summary}")
    assert summary.ran_twice > 0, "no stop found a job running: the test tested nothing"
    assert not private_cluster.execute(
        "SELECT 1 FROM jobs, jsonb_array_elements(errors) e LIMIT 1"), "a stop cost an attempt"
    assert survivor.process.poll() is None
