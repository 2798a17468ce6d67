"""build_plugin_manager and Hooks in-process: loading, checking, and the error policy.

Entry-point plugins, installed with pip and run by the real console script, are tested
in tests/acceptance/test_plugins.py.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest

from backy_gevent.hooks import Hooks, PluginError, build_plugin_manager, describe_plugins, hookimpl


class Recorder:
    """Records every call, taking a subset of each hook's arguments."""

    def __init__(self, calls: list[tuple[str, Any]], tag: str = "") -> None:
        self.calls = calls
        self.tag = tag

    @hookimpl
    def backy_before_job(self, job: Any) -> None:
        self.calls.append(("before" + self.tag, job))

    @hookimpl
    def backy_on_failure(self, will_retry: bool, error: BaseException) -> None:
        self.calls.append(("failure" + self.tag, (will_retry, str(error))))


class Raising:
    @hookimpl
    def backy_before_job(self) -> None:
        raise RuntimeError("before broke")

    @hookimpl
    def backy_retry_delay(self) -> float:
        raise RuntimeError("delay broke")


def manager(*plugins: tuple[str, object], **options: Any) -> Any:
    return build_plugin_manager(plugins, load_entry_points=False, **options)


def test_builtins_are_called_with_any_subset_of_arguments() -> None:
    calls: list[tuple[str, Any]] = []
    hooks = Hooks(manager(("rec", Recorder(calls))))
    hooks.call("backy_before_job", job="J", worker="W")
    hooks.call("backy_on_failure", job="J", worker=None, error=ValueError("x"),
               will_retry=False, timed_out=False)
    assert calls == [("before", "J"), ("failure", (False, "x"))]


def test_a_raising_plugin_is_logged_by_name_counted_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[tuple[str, Any]] = []
    errors: list[tuple[str, str]] = []
    # Registered before "bad", so called after it: the error must not stop the call.
    pm = manager(("first", Recorder(calls)), ("bad", Raising()))
    hooks = Hooks(pm, on_error=lambda plugin, hook: errors.append((plugin, hook)))
    with caplog.at_level(logging.ERROR, logger="backy_gevent.plugins"):
        assert hooks.call("backy_before_job", job="J", worker="W") == []
    assert calls == [("before", "J")]
    assert errors == [("bad", "backy_before_job")]
    [record] = caplog.records
    assert record.getMessage() == "plugin bad raised in backy_before_job: before broke"
    assert record.exc_info is not None


def test_a_broken_error_counter_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def counter(plugin: str, hook: str) -> None:
        raise RuntimeError("counter broke")

    hooks = Hooks(manager(("bad", Raising())), on_error=counter)
    hooks.call("backy_before_job", job="J", worker="W")
    assert "counting a plugin error failed" in caplog.text


def test_retry_delay_first_usable_answer_wins() -> None:
    class Answer:
        def __init__(self, value: Any) -> None:
            self.value = value

        @hookimpl
        def backy_retry_delay(self, job: Any) -> Any:
            return self.value

    errors: list[tuple[str, str]] = []
    # Called last-registered first: raising, then None (defers), then -1 (unusable),
    # then 2.5 (wins); 9 is never asked.
    pm = manager(("nine", Answer(9)), ("good", Answer(2.5)), ("negative", Answer(-1)),
                 ("none", Answer(None)), ("bad", Raising()))
    hooks = Hooks(pm, on_error=lambda plugin, hook: errors.append((plugin, hook)))
    chosen = hooks.first("backy_retry_delay", accept=lambda v: v >= 0, job="J", worker=None,
                         error=ValueError())
    assert chosen == 2.5
    assert errors == [("bad", "backy_retry_delay"), ("negative", "backy_retry_delay")]
    # Without ``accept``, the first answer that is not None is taken.
    assert hooks.first("backy_retry_delay", job="J", worker=None, error=ValueError()) == -1
    assert Hooks(manager()).first("backy_retry_delay", job="J", worker=None,
                                  error=ValueError()) is None


def test_disabled_plugins_are_left_out_and_unknown_names_refused() -> None:
    calls: list[tuple[str, Any]] = []
    pm = manager(("a", Recorder(calls, "a")), ("b", Recorder(calls, "b")), disabled=["b"])
    Hooks(pm).call("backy_before_job", job="J", worker="W")
    assert calls == [("beforea", "J")]
    assert [info.name for info in describe_plugins(pm)] == ["a"]
    message = r"^disable_plugins names no such plugin: c \(plugins: a\)$"
    with pytest.raises(PluginError, match=message):
        manager(("a", Recorder(calls)), disabled=["c"])


def test_a_misspelt_hook_fails_with_a_suggestion() -> None:
    misspelt = types.SimpleNamespace(backy_after_jobs=hookimpl(lambda job: None))
    with pytest.raises(PluginError) as caught:
        manager(("typo", misspelt))
    assert str(caught.value) == (
        "plugin typo implements unknown hook backy_after_jobs (did you mean backy_after_job?)"
    )


def test_an_optional_unknown_hook_is_allowed() -> None:
    optional = types.SimpleNamespace(backy_from_the_future=hookimpl(optionalhook=True)(
        lambda job: None
    ))
    manager(("future", optional))


def test_an_argument_the_hook_does_not_pass_fails_in_one_line() -> None:
    class Bad:
        @hookimpl
        def backy_on_failure(self, job: Any, exception: BaseException) -> None: ...

    with pytest.raises(PluginError) as caught:
        manager(("bad", Bad()))
    assert str(caught.value) == (
        "built-in plugin bad: backy_on_failure takes exception, which the hook does not pass"
        " (it passes job, worker, error, will_retry, timed_out)"
    )


def test_hook_wrappers_are_refused() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def backy_before_job(self, job: Any) -> Any:
            return (yield)

    with pytest.raises(PluginError, match="plugin wrap: backy_before_job is a hook wrapper"):
        manager(("wrap", Wrapper()))


def test_describe_plugins_for_built_ins() -> None:
    pm = manager(("z", Raising()), ("a", Recorder([])), ("empty", object()))
    assert [(i.name, i.distribution, i.version, i.hooks) for i in describe_plugins(pm)] == [
        ("a", None, None, ("backy_before_job", "backy_on_failure")),
        ("empty", None, None, ()),
        ("z", None, None, ("backy_before_job", "backy_retry_delay")),
    ]


def test_a_call_that_drifts_from_its_spec_is_backys_error_not_the_plugins() -> None:
    hooks = Hooks(manager(("rec", Recorder([]))))
    with pytest.raises(TypeError, match="backy_before_job called with job; its spec takes"):
        hooks.call("backy_before_job", job="J")


def test_an_answer_accept_cannot_judge_is_unusable() -> None:
    class Text:
        @hookimpl
        def backy_retry_delay(self) -> str:
            return "soon"

    errors: list[tuple[str, str]] = []
    hooks = Hooks(manager(("text", Text())), on_error=lambda p, h: errors.append((p, h)))
    assert hooks.first("backy_retry_delay", accept=lambda v: v >= 0, job=None, worker=None,
                       error=ValueError()) is None
    assert errors == [("text", "backy_retry_delay")]
