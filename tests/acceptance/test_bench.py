"""``backy-gevent bench`` runs end to end on a small workload and leaves nothing behind.

The real measurement is a command, not a test; this only proves the command works.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from tests.conftest import query, run_cli

SCRATCH_SCHEMAS = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'backy\\_bench\\_%%'"


def test_bench_reports_rates_and_cleans_up(server_dsn: str, db: Any) -> None:
    schemas_before = query(db, SCRATCH_SCHEMAS)
    done = run_cli("bench", "--jobs", "300", "--dsn", server_dsn, dsn=server_dsn, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"enqueue_many: 300 jobs in [\d.]+s = [\d,]+ jobs/s", done.stdout)
    assert re.search(r"run \(1 runner\): 300 jobs in [\d.]+s = [\d,]+ jobs/s", done.stdout)
    if shutil.which("pgbench"):
        assert re.search(r"pgbench \(-c 4, one INSERT per transaction\): [\d,]+ commits/s",
                         done.stdout)
    else:
        assert "pgbench: not found" in done.stdout
    schemas_after = query(db, SCRATCH_SCHEMAS)
    assert schemas_after == schemas_before  # its scratch schema is dropped
