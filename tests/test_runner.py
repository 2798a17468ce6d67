"""The Runner as an object: what it refuses before it starts. Its loops are tested
through the real console script in tests/acceptance/test_runner.py."""

from __future__ import annotations

import pytest

from backy_gevent.config import Settings
from backy_gevent.hooks import Hooks, build_plugin_manager
from backy_gevent.runner import Runner
from backy_gevent.worker import Registry, WorkerError


def test_a_runner_without_workers_says_how_to_register_some(settings: Settings) -> None:
    hooks = Hooks(build_plugin_manager(load_entry_points=False))
    with pytest.raises(WorkerError, match=r"backy\.workers entry points.*--import"):
        Runner(settings, Registry(), hooks, dsn=str(settings.dsn))
