"""The Worker base class and the registry: names, duplicates, bad settings, discovery."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import backy_gevent as backy
from backy_gevent.worker import (
    ENTRY_POINT_GROUP,
    Registration,
    Registry,
    WorkerError,
    check_worker_class,
    import_path,
)
from tests import workers
from tests.acceptance.distributions import ROOT, pip_install


class Twin(backy.Worker):
    name = "record"

    def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
        pass


def test_registry_from_classes() -> None:
    registry = Registry.from_classes(*workers.ALL)
    assert [r.name for r in registry] == sorted(cls.name for cls in workers.ALL)
    assert "record" in registry
    assert registry.get("record").cls is workers.Record
    assert registry.get("record").path == "tests.workers:Record"
    assert registry.name_of(workers.Record) == "record"
    assert registry.name_of("fail") == "fail"
    assert len(registry) == len(workers.ALL)


def test_duplicate_names_are_an_error_naming_both() -> None:
    with pytest.raises(WorkerError) as caught:
        Registry.from_classes(workers.Record, Twin)
    message = str(caught.value)
    assert "two workers named 'record'" in message
    assert "tests.workers:Record" in message
    assert "Twin" in message


def test_the_same_class_twice_is_not_a_duplicate() -> None:
    registry = Registry.from_classes(workers.Record, workers.Record)
    assert len(registry) == 1


def test_unknown_name_lists_what_is_registered() -> None:
    registry = Registry.from_classes(workers.Record, workers.Fail)
    with pytest.raises(WorkerError, match=r"unknown worker 'ghost' \(registered: fail, record\)"):
        registry.get("ghost")
    with pytest.raises(WorkerError, match="ghost"):
        registry.restricted(["record", "ghost"])
    assert [r.name for r in registry.restricted(["fail"])] == ["fail"]
    assert registry.restricted([]) is registry


def test_perform_must_be_defined() -> None:
    class Lazy(backy.Worker):
        name = "lazy"

    with pytest.raises(WorkerError, match="does not define perform"):
        check_worker_class(Lazy, "test")
    with pytest.raises(WorkerError, match=r"not a backy_gevent\.Worker subclass"):
        check_worker_class(object, "test")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("max_runtime", 0),
        ("max_runtime", -1.0),
        ("max_runtime", "20"),
        ("requeue_delay", -1),
        ("max_concurrency", 0),
        ("max_concurrency", 2.5),
        ("retry_count", -1),
        ("retry_count", 1_000_001),
        ("queue", ""),
        ("priority", "high"),
        ("priority", 2**31),  # past PostgreSQL's integer: no job of it could be written
        ("priority", -(2**31) - 1),
        ("unique_for", -1),
        ("global_concurrency", 0),
        ("global_concurrency", True),
        ("rate_limit", 10),
        ("rate_limit", (0, 1.0)),
        ("rate_limit", (10, 0)),
        ("rate_limit", [10, 1.0]),
        ("rate_limit", (10, 1.0, 2)),
    ],
)
def test_bad_worker_settings_are_named(attribute: str, value: Any) -> None:
    bad = type("Bad", (workers.Record,), {attribute: value, "name": "bad"})
    with pytest.raises(WorkerError, match=re.escape(f"{attribute}={value!r}")):
        Registry.from_classes(bad)


def test_a_worker_needs_a_name() -> None:
    class Anonymous(backy.Worker):
        def perform(self, job: backy.Job, args: dict[str, Any]) -> None:
            pass

    with pytest.raises(WorkerError, match="no name"):
        Registry.from_classes(Anonymous)
    with pytest.raises(WorkerError, match="not a registered worker"):
        Registry().name_of(Anonymous)


def test_discover_entry_points_and_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example worker distribution, pip-installed where importlib.metadata looks.
    target = pip_install(
        [ROOT / "plugins" / "backy-example-workers"], tmp_path / "site", tmp_path / "build"
    )
    monkeypatch.syspath_prepend(str(target))
    registry = Registry.discover(["tests.workers:Record", "tests.workers:Fail"])
    assert registry.get("record").source == "imports"
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    assert {"greet", "nap", "flaky"} <= {entry_point.name for entry_point in entry_points}
    for entry_point in entry_points:
        registration = registry.get(entry_point.name)
        assert registration.path == entry_point.value
        dist = entry_point.dist
        assert dist is not None
        assert registration.source == f"{dist.metadata['Name']} {dist.version}"
    assert registry.get("greet").source == "backy-example-workers 0.1.0"


def test_discover_rejects_a_duplicate_import() -> None:
    with pytest.raises(WorkerError, match="two workers named 'record'"):
        Registry.discover(["tests.workers:Record", "tests.test_worker:Twin"])


def test_discover_rejects_an_import_that_is_not_a_worker() -> None:
    with pytest.raises(WorkerError, match="can't import"):
        Registry.discover(["tests.workers:NoSuchClass"])
    with pytest.raises(WorkerError, match="not of the form"):
        import_path("tests.workers")
    with pytest.raises(WorkerError, match=r"not a backy_gevent\.Worker subclass"):
        Registry.discover(["tests.workers:record"])


def test_registration_source_is_kept() -> None:
    registry = Registry([Registration("x", workers.Record, "code")])
    assert registry.name_of(workers.Record) == "x"
    assert registry.get("x").source == "code"


def test_defaults_are_the_seeds() -> None:
    assert backy.Worker.max_runtime == 1.0
    assert backy.Worker.max_concurrency is None
    assert backy.Worker.requeue_delay == 10.0
    assert backy.Worker.queue == "default"
    assert backy.Worker.priority == 0
    assert backy.Worker.retry_count is None
    with pytest.raises(NotImplementedError):
        backy.Worker().perform(None, {})  # type: ignore[arg-type]


def test_touch_outside_a_runner_is_an_error(client: Any) -> None:
    job = client.enqueue(workers.Record)
    with pytest.raises(RuntimeError, match="not running in this process"):
        backy.touch(job)
    with pytest.raises(RuntimeError):
        job.touch()
