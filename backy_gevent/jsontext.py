"""Reading JSON that was written with no whitespace around it, fast.

``json.JSONDecoder.decode`` matches whitespace before and after the value, with a regular
expression each time; text that PostgreSQL wrote (``jsonb``) or that our own encoder
wrote has none, so the decoder's C scanner alone reads it in about half the time. Both
the connections' ``jsonb`` typecaster and the reading back of enqueued args use it.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable
from typing import Any


def whole_value_reader(decoder: json.JSONDecoder) -> Callable[..., Any]:
    """``decoder.decode`` for text with no whitespace around its value (anything else,
    and invalid text, goes to ``decoder.decode`` itself, which reads it or raises
    json's own error), None for None. It takes and ignores a second argument, so that it
    can serve as a psycopg2 typecaster as it is (a Python call less per value)."""
    # typeshed types make_scanner's argument as itself, not as the decoder it takes.
    scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
        decoder)  # type: ignore[arg-type]

    def read(text: str | None, cursor: Any = None) -> Any:
        if text is None:
            return None
        try:
            value, end = scan(text, 0)
        except StopIteration:
            return decoder.decode(text)
        return value if end == len(text) else decoder.decode(text)

    return read
