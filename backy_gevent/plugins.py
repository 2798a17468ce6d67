"""Builds the plugin manager, and calls hooks so that one plugin's error harms nothing.

Built-in plugins are registered first, then ``backy.plugins`` entry points, then
``check_pending()`` makes a misspelt hook name fail at start-up with a clear message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import pluggy

from backy_gevent import hookspecs

ENTRY_POINT_GROUP = "backy.plugins"

log = logging.getLogger("backy_gevent.plugins")


class PluginError(RuntimeError):
    """A plugin can't be loaded or implements a hook that does not exist."""


def build_plugin_manager(
    builtins: Iterable[tuple[str, object]] = (),
    *,
    disabled: Iterable[str] = (),
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """A plugin manager with built-ins, then entry-point plugins, checked.

    ``disabled`` names plugins (built-in or entry-point names) to leave out; naming a
    plugin that does not exist is an error, so a typo doesn't go unnoticed.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    skip = set(disabled)
    known = {name for name, _ in builtins}
    for name, plugin in builtins:
        if name not in skip:
            pm.register(plugin, name=name)
    if load_entry_points:
        known.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
        for name in skip:
            pm.set_blocked(name)
        try:
            # pluggy records each plugin's distribution for list_plugin_distinfo().
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:
            raise PluginError(f"a backy.plugins entry point failed to load: {exc!r}") from exc
    unknown = skip - known
    if unknown:
        raise PluginError("disable_plugins names no such plugin: " + ", ".join(sorted(unknown)))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)}: {exc}") from exc
    for hook_name in dir(pm.hook):
        if not hook_name.startswith("backy_"):
            continue
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                raise PluginError(
                    f"plugin {impl.plugin_name}: {hook_name} is a hook wrapper; backy calls"
                    " each implementation on its own, so use the before and after hooks"
                )
    return pm


class Hooks:
    """Calls the hooks of one plugin manager, one implementation at a time.

    An implementation that raises is logged with its plugin's name and reported to
    ``on_error(plugin_name, hook_name)`` (the metrics count it); the others still run
    and the caller carries on as if nothing happened.
    """

    def __init__(
        self,
        plugin_manager: pluggy.PluginManager,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.plugin_manager = plugin_manager
        self.on_error = on_error

    def _implementations(self, hook_name: str) -> list[pluggy.HookImpl]:
        caller = getattr(self.plugin_manager.hook, hook_name)
        # pluggy's own order: last registered first.
        return list(reversed(caller.get_hookimpls()))

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation; return the results that were not None."""
        results = []
        for impl in self._implementations(hook_name):
            result = self._call_one(hook_name, impl, kwargs)
            if result is not None:
                results.append(result)
        return results

    def first(
        self, hook_name: str, accept: Callable[[Any], bool] = lambda _: True, **kwargs: Any
    ) -> Any:
        """Call implementations until one returns a result ``accept`` takes; else None."""
        for impl in self._implementations(hook_name):
            result = self._call_one(hook_name, impl, kwargs)
            if result is None:
                continue
            if accept(result):
                return result
            self._report(
                hook_name, impl.plugin_name, ValueError(f"returned an unusable value {result!r}")
            )
        return None

    def has_implementations(self, hook_name: str) -> bool:
        """Whether any plugin implements the hook (lets callers skip building arguments)."""
        return bool(getattr(self.plugin_manager.hook, hook_name).get_hookimpls())

    def _call_one(self, hook_name: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        try:
            return impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception as exc:
            self._report(hook_name, impl.plugin_name, exc)
            return None

    def _report(self, hook_name: str, plugin_name: str, exc: BaseException) -> None:
        log.error(
            "plugin %s raised in %s: %s", plugin_name, hook_name, exc, exc_info=exc
        )
        if self.on_error is not None:
            try:
                self.on_error(plugin_name, hook_name)
            except Exception:  # a broken counter must not break the caller either
                log.exception("counting a plugin error failed")
