"""Fault scenarios: real runners drain thousands of jobs on a private cluster while the
test kills them, restarts the server, terminates their sessions or starves them of
connections; then the ledger accounts for every job.

Faults are paced by progress (so many runs finished since the last one), never by the
clock, so a slow machine changes the numbers, not the outcome. Each scenario prints one
line (``pytest -s``) with what the README's table needs: jobs, faults injected, lost, ran
twice, and time to recover (from the end of a fault until the first job claimed after it
has run to its end: the runners reached the database again and work).
"""

from __future__ import annotations

import collections
import datetime
import itertools
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import pytest

from backy_gevent.runner.maintenance import BEAT_SECONDS, LEADER_LEASE_SECONDS
from tests import workers
from tests.conftest import RunnerProcess, wait_until
from tests.faults import ledger
from tests.faults.cluster import PrivateCluster
from tests.faults.conftest import RunnerOn, make_client

POLL = 0.2
RUNNER_ARGS = ("--poll-interval", str(POLL), "--worker", "steady", "--shutdown-timeout", "2")
#: A dead runner's jobs run again within this (README, "Timing bound"), plus a second:
#: the rescue keeps their place in the queue.
LEASE = workers.Steady.max_runtime + workers.Steady.requeue_delay
#: A dead leader's successor is in office this long after its death, at the latest.
HANDOVER = LEADER_LEASE_SECONDS + BEAT_SECONDS
DRAIN_TIMEOUT = 120.0
KILLS = 10


@dataclass
class Report:
    """The numbers of one scenario, printed as one line."""

    name: str
    faults: int = 0
    recoveries: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def recovered(self, fault_end: datetime.datetime, watch: Watch) -> None:
        """Wait for the first run claimed after ``fault_end`` to finish; note how long."""
        first = wait_until(lambda: watch.first_finish_after(fault_end), 60,
                           what="a job to complete after the fault")
        self.recoveries.append((first - fault_end).total_seconds())

    def print(self, summary: ledger.Summary) -> None:
        recover = (f" recover_s=mean {sum(self.recoveries) / len(self.recoveries):.2f}"
                   f" max {max(self.recoveries):.2f}") if self.recoveries else ""
        extra = "".join(f" {key}={value}" for key, value in self.extra.items())
        print(f"\nFAULT {self.name}: {summary} faults={self.faults}{recover}{extra}"
              f" elapsed_s={time.monotonic() - self.started:.1f}")


class Watch:
    """The test's own view of the cluster, on one connection opened again when a fault
    broke it (opened early, it keeps a slot when the scenario takes all the others)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._conn is None:
                    self._conn = psycopg2.connect(self.dsn, connect_timeout=2,
                                                  application_name="watch")
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # the server is restarting: ask again

    def value(self, sql: str, *params: Any) -> Any:
        return self.rows(sql, *params)[0][0]

    def waiting(self) -> int:
        """Jobs not yet done (available or running)."""
        return int(self.value("SELECT count(*) FROM jobs WHERE state IN ('available', 'running')"))

    def finished(self, pid: int | None = None) -> int:
        """Runs that finished (of one runner process, if ``pid``)."""
        return int(self.value(
            "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL"
            " AND (%s::int IS NULL OR pid = %s::int)", pid, pid))

    def first_finish_after(self, moment: datetime.datetime) -> datetime.datetime | None:
        value: datetime.datetime | None = self.value(
            "SELECT min(finished_at) FROM runs WHERE claimed_at >= %s", moment)
        return value

    def runner_sessions(self) -> int:
        return int(self.value(
            "SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name,"
            " 'backy-gevent ')"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@pytest.fixture
def watch(private_cluster: PrivateCluster) -> Iterator[Watch]:
    view = Watch(private_cluster.dsn)
    yield view
    view.close()


def restart_bound(
    killed_at: datetime.datetime, leader_kills: list[datetime.datetime]
) -> datetime.datetime:
    """When a job cut short by a kill must have started again (README, "Timing bound"):
    once its lease ran out and the leader rescued it; while a killed leader's successor
    is not yet in office, there is no rescue."""
    lease_out = killed_at + datetime.timedelta(seconds=LEASE)
    handovers = [at + datetime.timedelta(seconds=HANDOVER) for at in leader_kills
                 if at <= lease_out]
    return max([lease_out, *handovers]) + datetime.timedelta(seconds=POLL + 1.0)


def runner_id_of(watch: Watch, runner: RunnerProcess) -> str | None:
    """The id in the runners table of a runner process."""
    rows = watch.rows("SELECT id FROM jobs_runners WHERE pid = %s", runner.process.pid)
    return str(rows[0][0]) if rows else None


def enqueue(dsn: str, count: int, **args: Any) -> list[int]:
    """Enqueue ``count`` steady jobs; return their ids."""
    with make_client(dsn) as client:
        ids: list[int] = []
        for start in range(0, count, 1000):
            batch = [{"n": n, **args} for n in range(start, min(count, start + 1000))]
            ids += [job.id for job in client.enqueue_many(workers.Steady, batch)]
        return ids


def drain(watch: Watch) -> None:
    wait_until(lambda: watch.waiting() == 0, DRAIN_TIMEOUT, 0.2, what="every job to be done")


def advance(watch: Watch, runs: int, pid: int | None = None) -> None:
    """Wait until ``runs`` more runs have finished (of ``pid``), or no job is left."""
    target = watch.finished(pid) + runs
    wait_until(lambda: watch.finished(pid) >= target or not watch.waiting(), 60,
               what=f"{runs} more runs to finish")


# -- (a) kill -9 --------------------------------------------------------------------


def test_kill_9_a_runner_again_and_again(
    private_cluster: PrivateCluster, runner_on: RunnerOn, watch: Watch
) -> None:
    """Three runners drain ~3000 jobs; ten times, one of them is killed with SIGKILL once
    it has run 40 more jobs and a new one has taken its place. Every job is done; only
    the killed runners' attempts run again (in quarantine, uncounted), and they start
    again within the lease bound of the kill. Time to recover is from a kill until the
    last of its interrupted jobs has run to its end elsewhere."""
    report = Report("kill-9")
    dsn = private_cluster.dsn
    args = (*RUNNER_ARGS, "--delete-finished-jobs", "false")
    ids = enqueue(dsn, 2500, seconds=0.25)  # 20 at once per runner: ~80 jobs/s each
    runners: list[RunnerProcess] = [runner_on(dsn, *args) for _ in range(3)]
    kills: dict[int, datetime.datetime] = {}
    leaders: set[int] = set()  # victims that led maintenance when killed
    for slot in itertools.islice(itertools.cycle(range(len(runners))), KILLS):
        if watch.waiting() < 300:  # however slowly the kills come, there is work to cut
            ids += enqueue(dsn, 300, seconds=0.25)
        victim = runners[slot]
        # The replacement starts while the victim runs 40 more jobs, and is up before
        # the kill, so that its start-up (a second of CPU) does not slow the survivors'
        # rescue of the victim's jobs.
        runners[slot] = runner_on(dsn, *args, wait=False)
        advance(watch, 40, victim.process.pid)
        runners[slot].wait_started()
        if watch.value("SELECT runner_id FROM jobs_leader") == runner_id_of(watch, victim):
            leaders.add(victim.process.pid)
        victim.process.kill()
        victim.process.wait(10)
        kills[victim.process.pid] = ledger.now()
        report.faults += 1
    drain(watch)
    summary = ledger.check(dsn, ids, excused=ledger.killed(kills))

    # When each killed runner's interrupted jobs started again elsewhere, and when the
    # last of them had run to its end.
    by_job: dict[int, list[ledger.Run]] = collections.defaultdict(list)
    for run in ledger.read_runs(dsn):
        by_job[run.job_id].append(run)
    restarted_after: list[float] = []
    done_again: dict[int, datetime.datetime] = {}
    kill_times = sorted(kills.values())
    for runs in by_job.values():
        last = runs[-1].finished_at
        for run, following in itertools.pairwise(runs):
            if run.pid in kills and run.finished_at is None:
                killed_at = kills[run.pid]
                later_kills = [at for at in kill_times if at > killed_at]
                # A job that another kill caught again before it could start (claimed by
                # that runner) restarts after that kill instead: not this kill's to time.
                if not later_kills or following.started_at < later_kills[0]:
                    restarted_after.append((following.started_at - restart_bound(
                        killed_at, [kills[pid] for pid in leaders])).total_seconds())
                if last:
                    done_again[run.pid] = max(last, done_again.get(run.pid, last))
    lost_attempts = watch.value(
        "SELECT count(*) FROM jobs, jsonb_array_elements(errors) e"
        " WHERE e->>'error' = 'LeaseExpired'")
    assert lost_attempts == 0, "a job was charged for an attempt its runner's death cut short"
    report.recoveries = [(done_again[pid] - kills[pid]).total_seconds() for pid in done_again]
    report.extra["restarted_before_bound_s"] = f"min {-max(restarted_after, default=0):.2f}"
    report.extra["leaders_killed"] = len(leaders)
    report.print(summary)
    runner_on.assert_no_tracebacks()
    assert summary.ran_twice > 0, "no kill interrupted a job: the scenario tested nothing"
    # Kills come faster than leases run out, so most cut jobs are caught again by the next
    # kill before they can restart; the last kill's always count, unless (seen once on a
    # busy machine) it cut no run that had begun recording. Then there is nothing to time.
    assert max(restarted_after, default=0) <= 0, sorted(restarted_after)


# -- (b) the server restarts ------------------------------------------------------------


class Enqueuer(threading.Thread):
    """Enqueues batches of steady jobs, one statement each, until stopped, riding out
    database faults.

    A batch whose statement failed may have committed all the same (the connection
    broke after the commit): it is looked up by its tag once the server answers, and
    enqueued again only if it is not there. ``committed`` holds every id that is.
    """

    def __init__(self, dsn: str, size: int, pause: float) -> None:
        super().__init__(name="enqueuer", daemon=True)
        self.dsn, self.size, self.pause = dsn, size, pause
        self.committed: list[int] = []
        self.failed_statements = 0
        self.committed_in_doubt = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with make_client(self.dsn) as client:
                prefix = uuid.uuid4().hex
                number = 0
                while not self.stopping.wait(self.pause):
                    self._enqueue(client, f"{prefix}-{number}")
                    number += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _enqueue(self, client: Any, tag: str) -> None:
        batch = [{"batch": tag, "n": n} for n in range(self.size)]
        while True:
            try:
                jobs = client.enqueue_many(workers.Steady, batch)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.failed_statements += 1
                found = Watch(self.dsn)
                try:
                    ids = [row[0] for row in found.rows(
                        "SELECT id FROM jobs WHERE args->>'batch' = %s UNION"
                        " SELECT job_id FROM runs WHERE args->>'batch' = %s", tag, tag)]
                finally:
                    found.close()
                if ids:
                    assert len(ids) == self.size, f"batch {tag} half committed: {len(ids)}"
                    self.committed += ids
                    self.committed_in_doubt += 1
                    return
            else:
                self.committed += [job.id for job in jobs]
                return

    def finish(self) -> list[int]:
        """Stop after the batch under way; return every committed id."""
        self.stopping.set()
        self.join(60)
        assert not self.is_alive(), "the enqueuer is stuck"
        if self.error is not None:
            raise self.error
        return self.committed


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_server_restarts_during_a_drain_and_during_enqueues(
    private_cluster: PrivateCluster, runner_on: RunnerOn, watch: Watch, mode: str
) -> None:
    """Two runners drain a backlog while the test enqueues 50 more jobs every 50 ms; the
    server is restarted (``mode``) three times. No committed job is lost; only attempts
    under way around a restart run again."""
    report = Report(f"restart-{mode}")
    dsn = private_cluster.dsn
    backlog = enqueue(dsn, 1000)
    for _ in range(2):
        runner_on(dsn, *RUNNER_ARGS)
    enqueuer = Enqueuer(dsn, size=50, pause=0.05)
    enqueuer.start()
    windows: list[ledger.Window] = []
    try:
        for _ in range(3):
            advance(watch, 250)
            began = ledger.now()
            private_cluster.restart(mode)
            ended = ledger.now()
            windows.append((began, ended))
            report.faults += 1
            report.recovered(ended, watch)
    finally:
        committed = enqueuer.finish()
    drain(watch)
    summary = ledger.check(dsn, backlog + committed, excused=ledger.outage(windows, LEASE))
    report.extra.update(
        enqueued_during=len(committed),
        enqueue_retries=enqueuer.failed_statements,
        committed_in_doubt=enqueuer.committed_in_doubt,
    )
    report.print(summary)
    runner_on.assert_no_tracebacks()
    assert enqueuer.failed_statements, "no enqueue met a restart: the scenario tested less"


# -- (c) pg_terminate_backend -----------------------------------------------------------


def test_every_runner_session_is_terminated_again_and_again(
    private_cluster: PrivateCluster, runner_on: RunnerOn, watch: Watch
) -> None:
    """Two runners drain 3000 jobs; six times, every one of their sessions (pool and
    listener) is ended with pg_terminate_backend. They reconnect and lose nothing."""
    report = Report("terminate-backends")
    dsn = private_cluster.dsn
    ids = enqueue(dsn, 3000)
    runners = [runner_on(dsn, *RUNNER_ARGS) for _ in range(2)]
    moments: list[ledger.Window] = []
    terminated = 0
    for _ in range(6):
        advance(watch, 300)
        if not watch.waiting():
            break
        moment = ledger.now()
        terminated += private_cluster.terminate_backends("backy-gevent ")
        moments.append((moment, moment))
        report.faults += 1
        report.recovered(moment, watch)
    drain(watch)
    summary = ledger.check(dsn, ids, excused=ledger.outage(moments, LEASE))
    report.extra["sessions_terminated"] = terminated
    report.print(summary)
    runner_on.assert_no_tracebacks()
    assert report.faults >= 4
    assert all(runner.process.poll() is None for runner in runners)
    assert all("database error" in runner.output for runner in runners)


# -- (d) no connection to be had --------------------------------------------------------


def hog(dsn: str, held: list[Any]) -> None:
    """Open connections into ``held`` until the server refuses one: too many clients."""
    while True:
        try:
            held.append(psycopg2.connect(dsn, connect_timeout=5, application_name="hog"))
        except psycopg2.OperationalError as exc:
            if "too many clients" in str(exc) or "reserved" in str(exc):
                return
            raise


def release(held: list[Any]) -> datetime.datetime:
    for conn in held:
        conn.close()
    held.clear()
    return ledger.now()


def refusals(runner: RunnerProcess) -> int:
    return runner.output.count("too many clients")


def test_runners_ride_out_connection_exhaustion(
    private_cluster: PrivateCluster, runner_on: RunnerOn, watch: Watch
) -> None:
    """max_connections 40. First the runners start while the test holds every
    connection: they wait, and run once connections are freed. Then, mid-drain, the
    test ends their sessions and takes every slot they free, holds them until each
    runner has been refused again, and frees them."""
    report = Report("connections-exhausted")
    dsn = private_cluster.dsn
    private_cluster.set_max_connections(40)
    ids = enqueue(dsn, 2000)
    watch.waiting()  # the watch's connection is open before the slots run out
    held: list[Any] = []
    try:
        # 1. Runners that start with no connection to be had.
        began = ledger.now()
        hog(dsn, held)
        runners = [runner_on(dsn, *RUNNER_ARGS, wait=False) for _ in range(2)]
        wait_until(lambda: all(refusals(runner) for runner in runners), 30,
                   what="both runners to be refused a connection")
        ended = release(held)
        windows = [(began, ended)]
        report.faults += 1
        for runner in runners:
            runner.wait_started()
        report.recovered(ended, watch)

        # 2. Runners that lose their sessions and can't open new ones.
        advance(watch, 300)
        before = [refusals(runner) for runner in runners]
        began = ledger.now()
        hog(dsn, held)

        def starved() -> bool:
            """End the runners' sessions and take the slots they free."""
            rows = watch.rows(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM"
                " pg_stat_activity WHERE starts_with(application_name, 'backy-gevent ')")
            hog(dsn, held)
            return rows[0][0] == 0 and watch.runner_sessions() == 0

        wait_until(starved, 30, 0.05, what="the runners to hold no connection")
        wait_until(
            lambda: all(refusals(r) > b for r, b in zip(runners, before, strict=True)), 30,
            what="both runners to be refused a connection again")
        ended = release(held)
        windows.append((began, ended))
        report.faults += 1
        report.recovered(ended, watch)
    finally:
        release(held)
    drain(watch)
    summary = ledger.check(dsn, ids, excused=ledger.outage(windows, LEASE))
    report.print(summary)
    runner_on.assert_no_tracebacks()
    assert all(runner.process.poll() is None for runner in runners)


# -- (e) runners coming and going -----------------------------------------------------


def test_runners_come_and_go_warm_and_killed_without_a_lost_or_doubled_job(
    private_cluster: PrivateCluster, runner_on: RunnerOn, watch: Watch
) -> None:
    """Thousands of jobs while runners start, stop warm (SIGTERM, a short drain) and die
    (kill -9), one change every 30 runs or so, never fewer than one runner up. Every job
    is done; only the attempts a stop handed back or a kill cut short run again."""
    report = Report("churn")
    dsn = private_cluster.dsn
    ids = enqueue(dsn, 3000, seconds=0.1)
    up: list[RunnerProcess] = [runner_on(dsn, *RUNNER_ARGS) for _ in range(2)]
    ended: dict[int, datetime.datetime] = {}
    for change in range(12):
        if watch.waiting() < 300:
            ids += enqueue(dsn, 300, seconds=0.1)
        advance(watch, 30)
        if change % 3 == 2 or len(up) < 2:
            up.append(runner_on(dsn, *RUNNER_ARGS))  # one comes
            continue
        going = up.pop(0)
        if change % 2:
            going.process.kill()
            going.process.wait(10)
        else:
            going.signal(signal.SIGTERM)
            assert going.wait(15) == 0, going.output
        ended[going.process.pid] = ledger.now()
        report.faults += 1
    drain(watch)
    summary = ledger.check(dsn, ids, excused=ledger.killed(ended))
    report.extra["runners_up_at_end"] = len(up)
    report.print(summary)
    runner_on.assert_no_tracebacks()
    assert summary.lost == 0
