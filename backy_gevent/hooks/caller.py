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


#: One implementation of a hook, ready to call: its function, the names of the
#: arguments it takes (a subset of the spec's), and its plugin's name.
_Implementation = tuple[Callable[..., Any], tuple[str, ...], str]


class Hooks:
    """Calls the hooks of one plugin manager, one implementation at a time.

    An implementation that raises is logged with its plugin's name and reported to
    ``on_error(plugin_name, hook_name)`` (the metrics count it); the others still run
    and the caller carries on as if nothing happened.

    Each hook's implementations are looked up once, at its first call (hooks run twice
    per job; the lookup cost more than a plugin's own work): register every plugin
    before the first call, as ``build_plugin_manager`` does.
    """

    def __init__(
        self,
        plugin_manager: pluggy.PluginManager,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.plugin_manager = plugin_manager
        self.on_error = on_error
        #: Per hook: its implementations in pluggy's order, and its spec's argument
        #: names (None: a hook with no spec).
        self._known: dict[str, tuple[list[_Implementation], frozenset[str] | None]] = {}

    def _implementations(self, hook_name: str, kwargs: dict[str, Any]) -> list[_Implementation]:
        known = self._known.get(hook_name)
        if known is None:
            caller = getattr(self.plugin_manager.hook, hook_name)
            argnames = None if caller.spec is None else frozenset(caller.spec.argnames)
            # pluggy's own order: last registered first.
            implementations = [(impl.function, tuple(impl.argnames), impl.plugin_name)
                               for impl in reversed(caller.get_hookimpls())]
            known = self._known[hook_name] = (implementations, argnames)
        implementations, argnames = known
        # A call without exactly the spec's arguments is backy's bug, not a plugin's:
        # fail here rather than blame the plugin for a KeyError.
        if argnames is not None and kwargs.keys() != argnames:
            raise TypeError(
                f"{hook_name} called with {', '.join(sorted(kwargs))}; its spec takes"
                f" {', '.join(sorted(argnames))}"
            )
        return implementations

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation; return the results that were not None."""
        results = []
        for implementation in self._implementations(hook_name, kwargs):
            result = self._call_one(hook_name, implementation, kwargs)
            if result is not None:
                results.append(result)
        return results

    def first(
        self, hook_name: str, accept: Callable[[Any], bool] = lambda _: True, **kwargs: Any
    ) -> Any:
        """Call implementations until one returns a result ``accept`` takes; else None."""
        for implementation in self._implementations(hook_name, kwargs):
            result = self._call_one(hook_name, implementation, kwargs)
            if result is None:
                continue
            try:
                usable = accept(result)
            except Exception:  # a value accept can't even judge is unusable
                usable = False
            if usable:
                return result
            self._report(hook_name, implementation[2],
                         ValueError(f"returned an unusable value {result!r}"))
        return None

    def _call_one(
        self, hook_name: str, implementation: _Implementation, kwargs: dict[str, Any]
    ) -> Any:
        function, argnames, plugin_name = implementation
        try:
            return function(*[kwargs[name] for name in argnames])
        except Exception as exc:
            self._report(hook_name, plugin_name, exc)
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
