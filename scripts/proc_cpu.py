"""CPU time of processes, from /proc: the one reader the measuring scripts share
(``idle_cost``, ``runner_cpu``, ``stream_turns``; each is run as ``python scripts/X.py``,
so this directory is on its path)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


def cpu_seconds(pids: Iterable[int], *, children: bool = False) -> float:
    """User and system CPU the processes ``pids`` have used so far, in seconds; with
    ``children``, their child processes' too. A process that is gone counts nothing."""
    pids = list(pids)
    if children:
        for pid in list(pids):
            with contextlib.suppress(OSError):
                pids += [int(child) for child in
                         Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
