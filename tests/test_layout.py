"""The package's shape: no module imports one that imports it back, the console script
patches gevent first, and the public names stay where the README says they are."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "backy_gevent"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Which backy_gevent modules each one imports, TYPE_CHECKING imports included."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in files else node.module for t in targets]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself, with the path it takes."""
    found = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for target in graph[node]:
                if target == start:
                    found.append([*path, start])
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert len(graph) > 30, "the graph is missing modules"
    assert "backy_gevent.runner.runner" in graph["backy_gevent.metrics.collectors"] or (
        "backy_gevent.runner" in graph["backy_gevent.metrics.collectors"]
    ), "TYPE_CHECKING imports are not being read"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()})


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("backy_gevent", "Worker"),
        ("backy_gevent", "Job"),
        ("backy_gevent", "JobTimeout"),
        ("backy_gevent", "WorkerError"),
        ("backy_gevent", "Client"),
        ("backy_gevent", "hookimpl"),
        ("backy_gevent", "enqueue"),
        ("backy_gevent", "enqueue_many"),
        ("backy_gevent", "touch"),
        ("backy_gevent", "cancel"),
        ("backy_gevent", "retry"),
        ("backy_gevent", "configure"),
        ("backy_gevent", "backoff"),
        ("backy_gevent.backoff", "exponential"),
        ("backy_gevent.testing", "perform"),
        ("backy_gevent.testing", "drain"),
        ("backy_gevent.testing", "TooManyRounds"),
        ("backy_gevent.job", "JobTimeout"),
        ("backy_gevent.runner", "Runner"),
        ("backy_gevent.plugins", "Hooks"),
        ("backy_gevent.plugins", "build_plugin_manager"),
        ("backy_gevent.metrics", "client_hooks"),
        ("backy_gevent.embedded", "embedded_server"),
        ("backy_gevent.config", "ConfigError"),
        ("backy_gevent.config", "Settings"),
        ("backy_gevent.worker", "WorkerError"),
        ("backy_gevent.web", "app"),
        ("backy_gevent.web", "Dashboard"),
        ("backy_gevent.cron", "Schedule"),
        ("backy_gevent.cron", "CronError"),
    ],
)
def test_documented_names_are_where_the_readme_says(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None
