"""Takes an argument the hook does not pass (``elapsed`` instead of ``duration``)."""

from __future__ import annotations

from typing import Any

import backy_gevent as backy


@backy.hookimpl
def backy_after_job(job: Any, elapsed: float) -> None:
    """Never called: the runner refuses to start."""
