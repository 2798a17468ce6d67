"""Implements a hook that does not exist (a typo of backy_before_job)."""

from __future__ import annotations

from typing import Any

import backy_gevent as backy


@backy.hookimpl
def backy_befor_job(job: Any, worker: Any) -> None:
    """Never called: the runner refuses to start."""
