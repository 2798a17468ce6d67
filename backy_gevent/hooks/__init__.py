"""Hook plugins: the specs (declarations only), the manager builder, the safe caller.

``specs`` declares every hook and documents it; ``manager`` builds the one pluggy
manager (built-ins, then ``backy.plugins`` entry points, then checks); ``caller``'s
``Hooks`` calls implementations one at a time so that a plugin's error harms nothing.
"""

from backy_gevent.errors import PluginError
from backy_gevent.hooks.caller import Hooks
from backy_gevent.hooks.manager import (
    ENTRY_POINT_GROUP,
    PluginInfo,
    build_plugin_manager,
    describe_plugins,
)
from backy_gevent.hooks.specs import PROJECT_NAME, hookimpl

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "Hooks",
    "PluginError",
    "PluginInfo",
    "build_plugin_manager",
    "describe_plugins",
    "hookimpl",
]
