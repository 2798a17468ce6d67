"""The connection pool: at most ``size`` connections out at once, given back for reuse,
under gevent (the runner's greenlets) as under threads (a threaded application); a
connection that broke, or was left in a transaction, closed instead; a slot given back
whatever happened."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from backy_gevent.db.connections import ConnectionPool
from tests.acceptance.scraping import free_port
from tests.conftest import ROOT

#: Borrows from greenlets in a gevent-patched process; prints the most connections out
#: at once, and how many distinct connections were used.
GREENLETS = r"""
from gevent import monkey
monkey.patch_all()
import sys, gevent
from backy_gevent.db import green
from backy_gevent.db.connections import ConnectionPool
green.install()
pool = ConnectionPool(sys.argv[1], size=3, application_name="test")
out, peak, seen = [0], [0], set()
def borrow():
    with pool.borrow() as conn:
        out[0] += 1
        peak[0] = max(peak[0], out[0])
        seen.add(id(conn))
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.02)")
        out[0] -= 1
gevent.joinall([gevent.spawn(borrow) for _ in range(12)], raise_error=True)
print(peak[0], len(seen))
"""


def test_greenlets_share_at_most_size_connections(dsn: str) -> None:
    result = subprocess.run([sys.executable, "-c", GREENLETS, dsn], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    # Twelve greenlets, three at a time: the others waited, and without blocking the hub
    # (the holders' queries could not have finished).
    peak, connections = result.stdout.split()
    assert (int(peak), int(connections)) == (3, 3)


def test_threads_share_at_most_size_connections(dsn: str) -> None:
    pool = ConnectionPool(dsn, size=2, application_name="test")
    lock = threading.Lock()
    out, peak, seen = [0], [0], set()

    def borrow() -> None:
        with pool.borrow() as conn:
            with lock:
                out[0] += 1
                peak[0] = max(peak[0], out[0])
                seen.add(id(conn))
            time.sleep(0.02)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            with lock:
                out[0] -= 1

    threads = [threading.Thread(target=borrow) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    pool.close()
    assert all(not thread.is_alive() for thread in threads)
    assert (peak[0], len(seen)) == (2, 2)


def test_a_connection_is_given_back_after_a_statement_error_and_reused(dsn: str) -> None:
    pool = ConnectionPool(dsn, size=1, application_name="test")
    try:
        with pytest.raises(psycopg2.errors.DivisionByZero), pool.borrow() as conn, \
                conn.cursor() as cur:
            first = conn
            cur.execute("SELECT 1 / 0")
        with pool.borrow() as conn:
            assert conn is first and not conn.closed
    finally:
        pool.close()


def test_a_connection_broken_or_left_in_a_transaction_is_closed_not_reused(dsn: str) -> None:
    pool = ConnectionPool(dsn, size=1, application_name="test")
    try:
        with pytest.raises(psycopg2.OperationalError), pool.borrow() as conn, \
                conn.cursor() as cur:
            terminated = conn
            cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert terminated.closed
        with pytest.raises(RuntimeError), pool.borrow() as conn:
            in_transaction = conn
            assert conn is not terminated  # the one slot was given back
            conn.autocommit = False
            conn.cursor().execute("SELECT 1")
            raise RuntimeError("failed inside a transaction")
        assert in_transaction.closed
        with pool.borrow() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 AS one")
            assert cur.fetchone()["one"] == 1
    finally:
        pool.close()


def test_a_failed_connect_gives_its_slot_back(dsn: str) -> None:
    refused = psycopg2.extensions.make_dsn(dsn, host="127.0.0.1", port=free_port())
    pool = ConnectionPool(refused, size=1, application_name="test", timeout=2.0)
    for _ in range(2):  # the second would wait forever for the first's slot
        with pytest.raises(psycopg2.OperationalError), pool.borrow():
            pass


def test_a_closed_pool_refuses_borrows_and_closes_what_comes_back(dsn: str) -> None:
    pool = ConnectionPool(dsn, size=2, application_name="test")
    with pool.borrow() as conn:
        pool.close()
    assert conn.closed
    with pytest.raises(psycopg2.InterfaceError, match="closed"), pool.borrow():
        pass


def test_each_connection_keeps_one_tuple_cursor(dsn: str) -> None:
    pool = ConnectionPool(dsn, size=1, application_name="test")
    try:
        with pool.borrow() as conn:
            cur = conn.tuple_cursor()
            cur.execute("SELECT 1, 'a'")
            assert cur.fetchall() == [(1, "a")]
        with pool.borrow() as conn:
            assert conn.tuple_cursor() is cur
            cur.close()  # a closed one is replaced
            fresh = conn.tuple_cursor()
            assert fresh is not cur
            fresh.execute("SELECT 2")
            assert fresh.fetchall() == [(2,)]
    finally:
        pool.close()
