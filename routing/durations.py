"""Durations as operators write them in the rules file: ``90s``, ``3m``, ``1h``, ``30d``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse ``90s``, ``1h30m``, ``2d``; a bare number is seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text!r}")
        return timedelta(seconds=text)
    s = str(text).strip().lower().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"not a duration: {text!r} (write e.g. 90s, 3m, 1h, 30d)")
    return timedelta(seconds=total)


def format_duration(td: timedelta) -> str:
    """The shortest exact spelling: ``90s`` stays ``90s``, 180 s is ``3m``."""
    secs = td.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    if secs == int(secs):
        return f"{int(secs)}s"
    return f"{int(secs * 1000)}ms"
