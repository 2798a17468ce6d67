"""psycopg2 on gevent (``db.green``): a connection's waits bounded by its silence
timeout, each wait on its own (a connection that answers keeps working however long it
lives), an interrupted query cancelled on the server, and the watchers a connection
waits with made once for its socket.

Each scenario runs in a gevent-patched process of its own, which prints what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

#: The scenarios; argv: the DSN. Prints one JSON object.
SCENARIOS = r"""
from gevent import monkey
monkey.patch_all()
import json, sys, time, gevent
from backy_gevent.db import green
from backy_gevent.db.connections import connect
green.install()
dsn = sys.argv[1]
seen = {}

# Five replies, each 0.2 s in coming, with a silence bound of 0.35 s: a second in all,
# and no single wait over the bound.
conn = connect(dsn, timeout=0.35, application_name="green-answers")
began = time.monotonic()
with conn.cursor() as cur:
    for _ in range(5):
        cur.execute("SELECT 7 AS n FROM pg_sleep(0.2)")
        assert cur.fetchone()["n"] == 7
    seen["answering_took"] = time.monotonic() - began
    seen["kept_waits"] = conn.green_waits is not None
    kept = conn.green_waits
    cur.execute("SELECT 1")
    seen["same_waits"] = conn.green_waits is kept

# A reply that takes longer than the bound: given up, the connection closed. (The
# server's own bound, statement_timeout, would answer first: it is lifted.)
with conn.cursor() as cur:
    cur.execute("SET statement_timeout = 0")
began = time.monotonic()
try:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_sleep(3)")
except green.DatabaseSilent as exc:
    seen["silent"] = str(exc)
seen["silent_after"] = time.monotonic() - began
seen["closed"] = bool(conn.closed)

# An interrupted query (a gevent.Timeout) is cancelled on the server.
slow = connect(dsn, timeout=10.0, application_name="green-interrupted")
began = time.monotonic()
try:
    with gevent.Timeout(0.3), slow.cursor() as cur:
        cur.execute("SELECT pg_sleep(30)")
except gevent.Timeout:
    seen["interrupted_after"] = time.monotonic() - began
# (Looked at for up to 2 s, for the server's own bookkeeping: not cancelled, the query
# would go on for 30.)
with connect(dsn) as watcher, watcher.cursor() as cur:
    looked_until = time.monotonic() + 2.0
    while True:
        cur.execute("SELECT count(*) AS n FROM pg_stat_activity"
                    " WHERE application_name = 'green-interrupted' AND state = 'active'")
        seen["active_on_server"] = cur.fetchone()["n"]
        if not seen["active_on_server"] or time.monotonic() > looked_until:
            break
        time.sleep(0.05)
print(json.dumps(seen))
"""


def run_scenarios(dsn: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", SCENARIOS, dsn], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def test_waits_are_bounded_one_by_one_and_interrupts_cancel(dsn: str) -> None:
    seen = run_scenarios(dsn)
    # Each wait has the bound to itself: the clock starts again for every reply.
    assert 1.0 <= seen["answering_took"] < 3.0
    # What the connection waits with is made once, not for every wait.
    assert seen["kept_waits"] and seen["same_waits"]
    assert seen["silent"] == "the database sent nothing for 0.35s"
    assert 0.3 <= seen["silent_after"] < 2.0
    assert seen["closed"]
    assert 0.3 <= seen["interrupted_after"] < 3.0
    # The query was cancelled on the server, not left to run its 30 s.
    assert seen["active_on_server"] == 0
