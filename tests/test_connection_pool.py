"""The connection pool: at most ``size`` connections out at once, given back for reuse,
under gevent (the runner's greenlets) as under threads (a threaded application)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from backy_gevent.db.connections import ConnectionPool
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
print(type(pool._slots).__module__, peak[0], len(seen))
"""


def test_greenlets_share_at_most_size_connections(dsn: str) -> None:
    result = subprocess.run([sys.executable, "-c", GREENLETS, dsn], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    module, peak, connections = result.stdout.split()
    assert module.startswith("gevent")
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
    assert type(pool._slots).__module__ == "threading"
    assert (peak[0], len(seen)) == (2, 2)
