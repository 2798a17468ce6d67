"""HTML that escapes by default: every value put into a template is escaped unless it is
already ``Markup`` (HTML built here). Job args, errors and tracebacks are user data.
"""

from __future__ import annotations

import html
import string
from collections.abc import Iterable
from typing import Any


class Markup(str):
    """Text that is HTML already: put into a template as it is."""

    __slots__ = ()


def escape(value: Any) -> Markup:
    """``value`` as HTML text: ``Markup`` as it is, anything else escaped (quotes too, so
    it is safe inside an attribute value as well); None is empty."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def render(template: str, **values: Any) -> Markup:
    """Fill a ``string.Template`` (``$name`` or ``${name}``) with escaped values.

    A placeholder with no value is an error (``KeyError``), not an empty string.
    """
    return Markup(string.Template(template).substitute({k: escape(v) for k, v in values.items()}))


def join(parts: Iterable[Any], separator: str = "") -> Markup:
    """Escaped parts, joined."""
    return Markup(separator.join(escape(part) for part in parts))


def attributes(**values: Any) -> Markup:
    """HTML attributes: ``True`` writes the bare name, ``False`` and None leave it out,
    anything else is escaped; a trailing underscore is dropped (``class_``)."""
    parts = []
    for name, value in values.items():
        name = name.rstrip("_").replace("_", "-")
        if value is True:
            parts.append(name)
        elif value not in (False, None):
            parts.append(f'{name}="{escape(value)}"')
    return Markup(" ".join(parts))
