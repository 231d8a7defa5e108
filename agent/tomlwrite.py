"""Writing TOML: the standard library reads it (tomllib) but cannot write it.

Covers what spime-agent configs hold: tables, arrays of tables, strings, integers, floats,
booleans and arrays (inline tables inside them). Used by activation; reading stays tomllib's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# -- TOML writing ----------------------------------------------------------------------------
# The standard library reads TOML but cannot write it. This covers what configs hold: tables,
# arrays of tables, strings, integers, floats, booleans and arrays (inline tables inside them).

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else toml_string(k)


def _value(v: Any) -> str:
    # bool before int: bool is an int subclass.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, Path):
        return toml_string(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise ValueError(f"cannot write a {type(v).__name__} value as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _emit(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    for k, v in table.items():
        if not isinstance(v, Mapping) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if isinstance(v, Mapping):
            sub = (*path, _key(k))
            lines += ["", f"[{'.'.join(sub)}]"]
            _emit(lines, sub, v)
    for k, v in table.items():
        if _is_table_array(v):
            sub = (*path, _key(k))
            for item in v:
                lines += ["", f"[[{'.'.join(sub)}]]"]
                _emit(lines, sub, item)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """TOML text for ``data``; ``tomllib.loads`` of it gives ``data`` back."""
    lines: list[str] = []
    _emit(lines, (), data)
    return "\n".join(lines).lstrip("\n") + "\n"
