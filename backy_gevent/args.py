"""Job args: checked and written as JSON that jsonb can hold, read back as jsonb gives them.

``encode_args`` and ``encode_args_list`` raise ``BadJobArgs`` naming the key that can't be
stored; ``decode_args_list`` reads the JSON they wrote the way a round trip through a
jsonb column would return it, so that ``enqueue`` can return a job's args without reading
them back from the row.
"""

from __future__ import annotations

import decimal
import json
import json.encoder
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from backy_gevent.errors import BadJobArgs
from backy_gevent.jsontext import whole_value_reader

#: One encoder for every call: ``json.dumps`` with an option builds a new one each time.
_ENCODER = json.JSONEncoder(allow_nan=False)


def _make_encode() -> Callable[[Any], str]:
    """``_ENCODER.encode`` for a dict or list, with json's C encoder made once instead of
    per call (a tenth of a single enqueue's Python work). It keeps no record of the
    containers it is in: a circular reference recurses until RecursionError, which the
    callers handle as they handle json's own "Circular reference" error."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without json's C accelerator
        return _ENCODER.encode
    encoder = make(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None,
                   ": ", ", ", False, False, False)
    return lambda value: "".join(encoder(value, 0))


_encode = _make_encode()


def encode_args(args: Mapping[str, Any]) -> str:
    """JSON for a job's args, as PostgreSQL's jsonb can hold it.

    Raises ``BadJobArgs`` (a TypeError) naming the first key whose value can't be
    stored: not JSON (a set, a datetime...), NaN or an infinity (``1e999`` parses to
    one), nesting too deep, or a string holding a NUL character or a lone surrogate.
    """
    args = _as_dict(args)
    try:
        text = _encode(args)
    except (TypeError, ValueError, RecursionError):
        text = None
    # jsonb refuses \u0000 and lone surrogates, which json.dumps writes as \u escapes:
    # only text holding such an escape needs a closer look (pairs like \ud83d\ude00 pass).
    if text is not None and "\\u0000" not in text and "\\ud" not in text:
        return text
    # Slow path, for bad input and escapes: find the key to name in the error.
    for key, value in args.items():
        problem = text_problem(key) or _value_problem(value)
        if problem:
            raise BadJobArgs(f"job arg {key!r} can't be stored as JSON: {problem}")
    if text is None:
        raise BadJobArgs("job args can't be stored as JSON")
    return text


def _value_problem(value: Any) -> str | None:
    """Why jsonb can't hold this arg value, or None."""
    # Every string (keys included) and float in it, without recursion: a value nested as
    # deep as json.dumps allows could exhaust the stack here.
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        problem = None
        if isinstance(item, str):
            problem = text_problem(item)
        elif isinstance(item, float) and not math.isfinite(item):
            problem = f"it holds {item!r}, and JSON has no NaN or infinity (1e999 reads as inf)"
        elif isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))  # json.dumps below reports a circular reference
            stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
        if problem:
            return problem
    try:
        json.dumps(value, allow_nan=False)
    except RecursionError:
        return "nested too deeply"
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def text_problem(text: str) -> str | None:
    """Why PostgreSQL can't store this string, or None: it refuses NUL characters, and
    lone surrogates (what Python makes of bytes that are not UTF-8) are not text."""
    if "\x00" in text:
        return "it holds a NUL character (\\u0000), which PostgreSQL can't store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"it holds {exc.object[exc.start]!r}, a lone surrogate, which is not valid Unicode"
    return None


def encode_args_list(list_of_args: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
    """How many jobs, and their args as one JSON array, each element as ``encode_args``
    writes it (and checked as it checks it). One encoder call for the whole list."""
    checked = [_as_dict(args) for args in list_of_args]
    try:
        text = _encode(checked)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is not None and "\\u0000" not in text and "\\ud" not in text:
        return len(checked), text
    # Slow path: one at a time, so that the error names the job's key.
    return len(checked), "[" + ",".join(encode_args(args) for args in checked) + "]"


def _as_dict(args: Any) -> dict[str, Any]:
    if type(args) is not dict:
        if not isinstance(args, Mapping):
            raise BadJobArgs(f"job args must be a dict, not {type(args).__name__}")
        args = dict(args)
    # json would turn a key like 1 into "1": the job would not get its args back.
    for key in args:
        if not isinstance(key, str):
            raise BadJobArgs(f"job arg keys must be strings, got {key!r}")
    return args


def decode_args_list(text: str) -> list[dict[str, Any]]:
    """The args of a JSON array written by ``encode_args_list``, as jsonb returns them.

    ``jsonb`` keeps an object's keys shortest first, then in byte order, and a number
    written with an exponent and no fraction left (``1e+16``, as ``json`` writes floats
    from 1e16 up) comes back as an integer.
    """
    decoded: list[dict[str, Any]] = _decode(text)
    return decoded


def decode_args(text: str) -> dict[str, Any]:
    """The args of one JSON object written by ``encode_args``, as jsonb returns them
    (see ``decode_args_list``)."""
    decoded: dict[str, Any] = _decode(text)
    return decoded


def _jsonb_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Sorted by (length, bytes), as jsonb stores keys; a repeated key keeps its last value.
    if len(pairs) < 2:
        return dict(pairs)
    return dict(sorted(pairs, key=_jsonb_key_order))


def _jsonb_key_order(pair: tuple[str, Any]) -> tuple[int, str]:
    # UTF-8 bytes sort as the code points do, so only the length needs the encoding.
    key = pair[0]
    return len(key) if key.isascii() else len(key.encode()), key


def _jsonb_number(text: str) -> float | int:
    # PostgreSQL's numeric keeps as many decimals as the text had after its point, less
    # the exponent; none left, it prints an integer, which json reads as an int.
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    if exponent and int(exponent) >= decimals:
        return int(decimal.Decimal(text))
    return float(text) + 0.0  # numeric has no negative zero


#: Built once: ``json.loads`` with hooks builds a decoder on every call.
_DECODER = json.JSONDecoder(parse_float=_jsonb_number, object_pairs_hook=_jsonb_object)
#: ``_DECODER.decode`` for JSON written by ``_encode`` (no whitespace around it).
_decode = whole_value_reader(_DECODER)
