"""The hook list in README.md matches backy_gevent/hooks/specs.py.

README must show every hook spec as an inline-code signature line with exactly
the spec's arguments (`backy_after_job(job, worker, result, duration)`); a hook that
is missing, a signature that drifted, or a documented hook that no longer exists fails.
Each spec's docstring must say in which greenlet it runs, what its return value does and
what happens when it raises.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from backy_gevent.hooks import specs as hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (ROOT / "README.md",)
#: An inline-code call of a ``backy_`` name: `backy_after_job(job, worker)`.
SIGNATURE = re.compile(r"`(backy_[a-z_]+)\(([^`()]*)\)`")


def specs() -> dict[str, list[str]]:
    """Each hook spec's name and argument names, from the hookspecs module itself."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    found = {
        name: list(inspect.signature(function).parameters)
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if getattr(function, marker, None) is not None
    }
    assert found, "no hook specs found in backy_gevent.hooks.specs"
    return found


def documented(text: str) -> dict[str, set[tuple[str, ...]]]:
    """Each hook name shown as a signature in ``text``, with every argument list shown."""
    shown: dict[str, set[tuple[str, ...]]] = {}
    for match in SIGNATURE.finditer(text):
        arguments = tuple(a.strip() for a in match.group(2).split(",") if a.strip())
        shown.setdefault(match.group(1), set()).add(arguments)
    return shown


def form(name: str, arguments: list[str] | tuple[str, ...]) -> str:
    return f"{name}({', '.join(arguments)})"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_hook_is_documented_with_its_signature(document: Path) -> None:
    assert document.exists(), f"{document.relative_to(ROOT)} is missing"
    shown = documented(document.read_text())
    expected = specs()
    where = document.relative_to(ROOT)
    missing = [form(name, args) for name, args in expected.items() if name not in shown]
    assert not missing, f"{where} does not document: " + "; ".join(missing)
    drifted = [
        f"{form(name, args)} (the spec is {form(name, expected[name])})"
        for name, forms in shown.items()
        if name in expected
        for args in forms
        if list(args) != expected[name]
    ]
    assert not drifted, f"{where} shows signatures that drifted: " + "; ".join(drifted)
    gone = sorted(set(shown) - set(expected))
    assert not gone, f"{where} documents hooks that do not exist: " + ", ".join(gone)


@pytest.mark.parametrize("name", sorted(specs()))
def test_every_spec_says_where_it_runs_and_what_happens(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert "greenlet" in doc, f"{name}: say in which greenlet it is called"
    assert "Returns" in doc, f"{name}: say what the return value does"
    assert "Raises" in doc, f"{name}: say what happens when it raises"


def test_the_checker_catches_drift() -> None:
    text = "`backy_after_job(job, worker, result)` and `backy_gone(job)`"
    assert documented(text) == {
        "backy_after_job": {("job", "worker", "result")},
        "backy_gone": {("job",)},
    }
    assert specs()["backy_after_job"] == ["job", "worker", "result", "duration"]
