"""Builds the plugin manager: built-ins, then entry points, then checks.

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

from backy_gevent.errors import PluginError
from backy_gevent.hooks import specs

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
    pm = pluggy.PluginManager(specs.PROJECT_NAME)
    pm.add_hookspecs(specs)
    skip = set(disabled)
    known = _register_builtins(pm, builtins, skip)
    if load_entry_points:
        for name in skip:
            pm.set_blocked(name)
        known |= _load_entry_points(pm, taken=known)
    unknown = skip - known
    if unknown:
        raise PluginError(
            "disable_plugins names no such plugin: " + ", ".join(sorted(unknown))
            + f" (plugins: {', '.join(sorted(known)) or 'none'})"
        )
    _check(pm)
    return pm


def _register_builtins(
    pm: pluggy.PluginManager, builtins: Iterable[tuple[str, object]], skip: set[str]
) -> set[str]:
    """Register the built-in plugins not in ``skip``; return every built-in name."""
    known = set()
    for name, plugin in builtins:
        known.add(name)
        if name not in skip:
            register = functools.partial(pm.register, plugin, name)
            _register(pm, f"built-in plugin {name}", register)
    return known


def _load_entry_points(pm: pluggy.PluginManager, taken: set[str]) -> set[str]:
    """Load the ``backy.plugins`` entry points (blocked ones stay unimported); return
    their names. A name already ``taken`` by a built-in is ignored with a warning."""
    loaded = set()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in taken or entry_point.name in loaded:
            log.warning(
                "plugin name %s is taken; the backy.plugins entry point %s = %s is ignored",
                entry_point.name, entry_point.name, entry_point.value,
            )
            continue
        loaded.add(entry_point.name)
        where = f"plugin {entry_point.name} ({entry_point.value})"
        # pluggy loads it and records its distribution for list_plugin_distinfo().
        load = functools.partial(
            pm.load_setuptools_entrypoints, ENTRY_POINT_GROUP, entry_point.name
        )
        _register(pm, where, load)
    return loaded


def _check(pm: pluggy.PluginManager) -> None:
    """Refuse unknown hooks (``check_pending``) and hook wrappers, in one line each."""
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
