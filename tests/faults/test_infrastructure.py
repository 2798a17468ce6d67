"""The fault suite's own tools do what the scenarios rely on: the proxy forwards, stalls,
holds and cuts real PostgreSQL connections without losing a byte, and a private cluster
restarts, terminates backends and limits connections on demand; the ledger catches a
lost job and a repeat no fault excuses."""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import itertools
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from tests.conftest import wait_until
from tests.faults import ledger
from tests.faults.cluster import PrivateCluster
from tests.faults.proxy import TcpProxy

#: How long a query must stay unanswered to count as held: the proxy forwards within
#: milliseconds, so half a second without an answer is not a slow machine.
HELD = 0.5


@pytest.fixture
def threads() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        yield pool


def connect(dsn: str, **kwargs: Any) -> Any:
    conn = psycopg2.connect(dsn, connect_timeout=10, **kwargs)
    conn.autocommit = True
    return conn


def one(conn: Any, sql: str, *params: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def still_waiting(future: concurrent.futures.Future[Any]) -> bool:
    """True if ``future`` has no result after ``HELD`` seconds."""
    done, _ = concurrent.futures.wait([future], timeout=HELD)
    return not done


def test_the_proxy_forwards_queries_and_big_results_intact(
    private_cluster: PrivateCluster, proxy: TcpProxy
) -> None:
    with contextlib.closing(connect(proxy.dsn_for(private_cluster.dsn))) as conn:
        assert one(conn, "SELECT 6 * 7") == 42
        # Larger than the proxy's buffer limit: back-pressure, not loss.
        big = one(conn, "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200000) i")
        assert len(big) == 32 * 200000
        assert big == one(conn, "SELECT string_agg(md5(i::text), '') FROM"
                                " generate_series(1, 200000) i")
        assert one(conn, "SELECT length(%s)", big) == len(big)  # and the other way
        assert one(conn, "SELECT inet_server_port()") == private_cluster.port
    stats = proxy.stats()
    assert stats.accepted == 1
    wait_until(lambda: proxy.stats().open == 0, 5, what="the proxy to see the connection end")


def test_the_proxy_keeps_every_byte_in_order_through_stalls_and_holds() -> None:
    """3 MB of random bytes through the proxy to an echo server and back, the mode
    switched every few chunks: what comes back is exactly what went out."""
    echo_server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = echo_server.accept()
        with conn, contextlib.suppress(OSError):  # the proxy resets it when it closes
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    payload = random.Random(9).randbytes(3_000_000)  # less than the proxy buffers
    received = bytearray()
    with TcpProxy(echo_server.getsockname()[1]) as proxy, socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=30
    ) as client:

        def read() -> None:
            while len(received) < len(payload) and (data := client.recv(65536)):
                received.extend(data)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        proxy.stall()
        client.sendall(payload[:1000])
        reader.join(HELD)
        assert not received, "bytes went through a stalled proxy"
        modes = itertools.cycle([proxy.hold_replies, proxy.resume, proxy.stall, proxy.forward])
        for offset in range(1000, len(payload), 50_000):
            if offset % 200_000 < 50_000:
                next(modes)()
            client.sendall(payload[offset:offset + 50_000])
        proxy.resume()
        reader.join(30)
        echo_server.close()
    assert bytes(received) == payload


def test_a_stall_holds_queries_and_new_connections_until_resume(
    private_cluster: PrivateCluster, proxy: TcpProxy, threads: concurrent.futures.Executor
) -> None:
    dsn = proxy.dsn_for(private_cluster.dsn)
    with contextlib.closing(connect(dsn)) as conn:
        assert one(conn, "SELECT 1") == 1
        proxy.stall()
        answer = threads.submit(one, conn, "SELECT 'after the stall'")
        opening = threads.submit(connect, dsn)
        assert still_waiting(answer)
        assert still_waiting(opening)
        assert proxy.stats().open == 2  # the new connection is accepted, not refused
        proxy.resume()
        assert answer.result(10) == "after the stall"
        with contextlib.closing(opening.result(10)) as late:
            assert one(late, "SELECT 2") == 2


def test_hold_replies_forwards_the_request_and_delays_only_the_reply(
    private_cluster: PrivateCluster, proxy: TcpProxy, threads: concurrent.futures.Executor
) -> None:
    private_cluster.execute("CREATE TABLE marks (n int)")
    with contextlib.closing(connect(proxy.dsn_for(private_cluster.dsn))) as conn:
        proxy.hold_replies()
        answer = threads.submit(one, conn, "INSERT INTO marks VALUES (1) RETURNING n + 1")
        # The server got the statement and ran it (autocommit: the row is visible)...
        wait_until(lambda: private_cluster.execute("SELECT n FROM marks") == [(1,)], 5,
                   what="the insert to reach the server")
        # ...but its reply has not come back.
        assert still_waiting(answer)
        proxy.resume()
        assert answer.result(10) == 2
        assert one(conn, "SELECT count(*) FROM marks") == 1


def test_a_cut_resets_connections_and_refuses_new_ones_until_restore(
    private_cluster: PrivateCluster, proxy: TcpProxy
) -> None:
    dsn = proxy.dsn_for(private_cluster.dsn)
    conn = connect(dsn, application_name="cut-me")
    try:
        assert one(conn, "SELECT 1") == 1
        assert proxy.cut() == 1
        with pytest.raises(psycopg2.OperationalError):
            one(conn, "SELECT 1")
        with pytest.raises(psycopg2.OperationalError):
            connect(dsn)
        # The server saw the reset too: its backend ends.
        wait_until(
            lambda: not private_cluster.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'cut-me'"),
            10, what="the cut connection's backend to end",
        )
        stats = proxy.stats()
        assert (stats.cut, stats.refused, stats.open) == (1, 1, 0)
        proxy.restore()
        with contextlib.closing(connect(dsn)) as again:
            assert one(again, "SELECT 3") == 3
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_cluster_restarts_and_answers_on_the_same_port(
    private_cluster: PrivateCluster, mode: str
) -> None:
    private_cluster.execute("CREATE TABLE kept (n int)")
    private_cluster.execute("INSERT INTO kept SELECT generate_series(1, 100)")
    dsn = private_cluster.dsn
    with contextlib.closing(connect(dsn)) as before:
        private_cluster.restart(mode)
        with pytest.raises(psycopg2.OperationalError):
            one(before, "SELECT 1")
    assert private_cluster.dsn == dsn
    # Every commit survives, an immediate (crash-like) stop included.
    assert private_cluster.execute("SELECT count(*) FROM kept") == [(100,)]


def test_terminate_backends_ends_the_other_sessions_by_application_name(
    private_cluster: PrivateCluster,
) -> None:
    runners = [connect(private_cluster.dsn, application_name=f"backy-gevent r{n}")
               for n in range(3)]
    bystander = connect(private_cluster.dsn, application_name="bystander")
    try:
        assert private_cluster.terminate_backends("backy-gevent ") == 3
        for conn in runners:
            with pytest.raises(psycopg2.OperationalError):
                one(conn, "SELECT 1")
        assert one(bystander, "SELECT 1") == 1
        assert private_cluster.terminate_backends() == 1
        with pytest.raises(psycopg2.OperationalError):
            one(bystander, "SELECT 1")
    finally:
        for conn in [*runners, bystander]:
            conn.close()


def test_set_max_connections_limits_sessions(private_cluster: PrivateCluster) -> None:
    private_cluster.set_max_connections(5)
    assert private_cluster.execute("SHOW max_connections") == [("5",)]
    held = []
    try:
        with pytest.raises(psycopg2.OperationalError, match="too many clients"):
            for _ in range(10):
                held.append(connect(private_cluster.dsn))
        assert len(held) == 5
    finally:
        for conn in held:
            conn.close()


# -- the ledger -------------------------------------------------------------------------

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def run(pid: int, start: float, end: float | None) -> ledger.Run:
    return ledger.Run(1, 1, pid, at(start), None if end is None else at(end))


def test_a_kill_excuses_only_the_runs_it_cut_short() -> None:
    excused = ledger.killed({7: at(10)})
    assert excused(run(7, 9.5, None))  # under way at the kill
    assert excused(run(7, 9.5, 9.8))  # finished, outcome maybe not yet written
    assert not excused(run(7, 2, 3))  # finished long before: its outcome was written
    assert not excused(run(8, 9.5, None))  # another runner, alive


def test_an_outage_excuses_only_the_runs_it_cut_short() -> None:
    lease = 2.0
    excused = ledger.outage([(at(10), at(10.5))], lease)
    assert excused(run(1, 9.8, None))  # failed with the database
    assert excused(run(1, 9.0, 10.2))  # finished while away; lease ran out at 11
    assert not excused(run(1, 10.3, 10.4))  # lease until 12.3: the outcome was kept
    assert not excused(run(1, 2, 3))  # long before
    assert not excused(run(1, 20, None))  # long after


def test_the_ledger_finds_lost_jobs_and_unexcused_repeats(
    private_cluster: PrivateCluster,
) -> None:
    def job(state: str) -> int:
        [(job_id,)] = private_cluster.execute(
            "INSERT INTO jobs (worker, state) VALUES ('steady', %s) RETURNING id", state)
        return int(job_id)

    def ran(job_id: int, attempt: int, pid: int, start: float, end: float | None) -> None:
        private_cluster.execute(
            "INSERT INTO runs (job_id, attempt, worker, pid, started_at, finished_at)"
            " VALUES (%s, %s, 'steady', %s, %s, %s)",
            job_id, attempt, pid, at(start), None if end is None else at(end))

    done, kept, failed = job("completed"), job("completed"), job("failed")
    private_cluster.execute("DELETE FROM jobs WHERE id = %s", done)  # deleted on success
    ran(done, 1, 6, 0, 1)
    ran(kept, 1, 7, 0, None)  # its runner was killed at 0.5
    ran(kept, 2, 8, 3, 4)
    summary = ledger.check(private_cluster.dsn, [done, kept, failed],
                           excused=ledger.killed({7: at(0.5)}), terminal={"failed"})
    assert (summary.jobs, summary.runs, summary.ran_twice, summary.lost) == (3, 3, 1, 0)
    assert summary.terminal == {"failed": 1}

    waiting = job("available")
    ran(done, 2, 9, 5, 6)  # ran again after a finished run, no runner killed
    with pytest.raises(AssertionError) as failure:
        ledger.check(private_cluster.dsn, [done, kept, failed, waiting],
                     excused=ledger.killed({7: at(0.5)}), terminal={"failed"})
    message = str(failure.value)
    assert f"job {waiting} lost: row available" in message
    assert f"job {done} ran again, but no fault excuses" in message
