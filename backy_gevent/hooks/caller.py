"""Calls hooks so that one plugin's error harms nothing: the safe caller.

Every implementation is called on its own, so one that raises is logged with its
plugin's name, counted, and skipped, and the others and the caller carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pluggy

log = logging.getLogger("backy_gevent.plugins")


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
        #: The argument names of each hook's spec, once looked up (hooks run per job).
        self._argnames: dict[str, frozenset[str]] = {}

    def _implementations(self, hook_name: str, kwargs: dict[str, Any]) -> list[pluggy.HookImpl]:
        caller = getattr(self.plugin_manager.hook, hook_name)
        argnames = self._argnames.get(hook_name)
        if argnames is None and caller.spec is not None:
            argnames = self._argnames[hook_name] = frozenset(caller.spec.argnames)
        # A call without exactly the spec's arguments is backy's bug, not a plugin's:
        # fail here rather than blame the plugin for a KeyError.
        if argnames is not None and kwargs.keys() != argnames:
            raise TypeError(
                f"{hook_name} called with {', '.join(sorted(kwargs))}; its spec takes"
                f" {', '.join(sorted(argnames))}"
            )
        # pluggy's own order: last registered first.
        return list(reversed(caller.get_hookimpls()))

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation; return the results that were not None."""
        results = []
        for impl in self._implementations(hook_name, kwargs):
            result = self._call_one(hook_name, impl, kwargs)
            if result is not None:
                results.append(result)
        return results

    def first(
        self, hook_name: str, accept: Callable[[Any], bool] = lambda _: True, **kwargs: Any
    ) -> Any:
        """Call implementations until one returns a result ``accept`` takes; else None."""
        for impl in self._implementations(hook_name, kwargs):
            result = self._call_one(hook_name, impl, kwargs)
            if result is None:
                continue
            try:
                usable = accept(result)
            except Exception:  # a value accept can't even judge is unusable
                usable = False
            if usable:
                return result
            self._report(
                hook_name, impl.plugin_name, ValueError(f"returned an unusable value {result!r}")
            )
        return None

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
