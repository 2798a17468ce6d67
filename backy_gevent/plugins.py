"""The names a plugin's own tests use, at the path the README has always given.

``from backy_gevent.hooks import Hooks, build_plugin_manager`` keeps working; they
live in ``backy_gevent.hooks``.
"""

from backy_gevent.hooks import (
    ENTRY_POINT_GROUP,
    Hooks,
    PluginError,
    PluginInfo,
    build_plugin_manager,
    describe_plugins,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Hooks",
    "PluginError",
    "PluginInfo",
    "build_plugin_manager",
    "describe_plugins",
]
