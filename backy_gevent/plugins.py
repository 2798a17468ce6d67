"""Builds the plugin manager, and calls hooks so that one plugin's error harms nothing.

``build_plugin_manager`` is the one place a manager is built: built-in plugins first,
then ``backy.plugins`` entry points, then ``check_pending()``, so that a misspelt hook
name, an argument the hook does not pass, or a plugin that fails to import stops the
runner at start-up with a one-line ``PluginError`` (exit status 2 from the CLI).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import pluggy

from backy_gevent import hookspecs
from backy_gevent.errors import PluginError

ENTRY_POINT_GROUP = "backy.plugins"

log = logging.getLogger("backy_gevent.plugins")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def build_plugin_manager(
    builtins: Iterable[tuple[str, object]] = (),
    *,
    disabled: Iterable[str] = (),
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """A plugin manager with built-ins, then entry-point plugins, checked.

    ``builtins`` are ``(name, plugin)`` pairs registered first, the same way as outside
    plugins. ``disabled`` names plugins (built-in or entry-point names, the
    ``disable_plugins`` option) to leave out; a disabled entry point is not even
    imported, and naming a plugin that does not exist is an error, so a typo doesn't go
    unnoticed. Raises ``PluginError`` naming the plugin at fault.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    skip = set(disabled)
    known = set()
    for name, plugin in builtins:
        known.add(name)
        if name not in skip:
            register = functools.partial(pm.register, plugin, name)
            _register(pm, f"built-in plugin {name}", register)
    if load_entry_points:
        for name in skip:
            pm.set_blocked(name)
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in known:
                log.warning(
                    "plugin name %s is taken; the backy.plugins entry point %s = %s is ignored",
                    entry_point.name, entry_point.name, entry_point.value,
                )
                continue
            known.add(entry_point.name)
            where = f"plugin {entry_point.name} ({entry_point.value})"
            # pluggy loads it and records its distribution for list_plugin_distinfo().
            load = functools.partial(
                pm.load_setuptools_entrypoints, ENTRY_POINT_GROUP, entry_point.name
            )
            _register(pm, where, load)
    unknown = skip - known
    if unknown:
        raise PluginError(
            "disable_plugins names no such plugin: " + ", ".join(sorted(unknown))
            + f" (plugins: {', '.join(sorted(known)) or 'none'})"
        )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(_unknown_hooks_message(pm) or _one_line(str(exc))) from exc
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


def _register(pm: pluggy.PluginManager, where: str, load: Callable[[], Any]) -> None:
    """Run ``load`` (an import and a register) and turn any failure into a PluginError."""
    try:
        load()
    except pluggy.PluginValidationError as exc:
        # pluggy's text spans lines and repeats the plugin's repr; say it in one line.
        problem = _bad_arguments_message(pm, exc.plugin) or _one_line(str(exc))
        raise PluginError(f"{where}: {problem}") from exc
    except Exception as exc:
        raise PluginError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc


def _bad_arguments_message(pm: pluggy.PluginManager, plugin: object) -> str:
    """'backy_after_job takes elapsed, which the hook does not pass (...)', or ''."""
    for attribute in dir(plugin):
        caller = getattr(pm.hook, attribute, None) if attribute.startswith("backy_") else None
        if not isinstance(caller, pluggy.HookCaller) or caller.spec is None:
            continue
        if pm.parse_hookimpl_opts(plugin, attribute) is None:
            continue
        function = getattr(plugin, attribute)
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            continue
        # pluggy passes arguments by name; only those without a default must exist.
        required = [
            p.name for p in parameters
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        passed = caller.spec.argnames
        extra = [name for name in required if name not in passed]
        if extra:
            return (
                f"{attribute} takes {', '.join(extra)}, which the hook does not pass"
                f" (it passes {', '.join(passed)})"
            )
    return ""


def _unknown_hooks_message(pm: pluggy.PluginManager) -> str:
    """One line naming each implementation of a hook that has no spec."""
    specified = [name for name in dir(pm.hook) if name.startswith("backy_")]
    specified = [name for name in specified if getattr(pm.hook, name).has_spec()]
    problems = []
    for hook_name in sorted(vars(pm.hook)):
        caller = getattr(pm.hook, hook_name)
        if hook_name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(hook_name, specified, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(
                f"plugin {impl.plugin_name} implements unknown hook {hook_name}{hint}"
            )
    return "; ".join(problems)


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """What ``backy-gevent plugins`` shows about one registered plugin."""

    name: str
    distribution: str | None  # None for a built-in plugin
    version: str | None
    hooks: tuple[str, ...]


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Each registered plugin with its distribution, version and hooks, by name."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    described = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked: a disabled plugin
            continue
        dist = dists.get(id(plugin))
        callers = pm.get_hookcallers(plugin) or []
        described.append(
            PluginInfo(
                name=name,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                hooks=tuple(sorted(caller.name for caller in callers)),
            )
        )
    return sorted(described, key=lambda info: info.name)


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

    def _implementations(self, hook_name: str, kwargs: dict[str, Any]) -> list[pluggy.HookImpl]:
        caller = getattr(self.plugin_manager.hook, hook_name)
        # A call without exactly the spec's arguments is backy's bug, not a plugin's:
        # fail here rather than blame the plugin for a KeyError.
        if caller.spec is not None and set(kwargs) != set(caller.spec.argnames):
            raise TypeError(
                f"{hook_name} called with {', '.join(sorted(kwargs))}; its spec takes"
                f" {', '.join(caller.spec.argnames)}"
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
