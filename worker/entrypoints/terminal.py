"""What an operator's terminal receives: every character a terminal would act on, from event data or
anywhere else, written as a visible escape."""

from __future__ import annotations

import io
import re
from typing import Any

# What an operator's terminal must never receive raw from event data: C0 controls but newline and
# tab (escape sequences can rewrite the screen, retitle the window, or hide text with \r), DEL, C1
# controls, line and paragraph separators, and bidirectional overrides (text that reads one way
# and is another).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f]")


def escape_controls(text: str) -> str:
    """``text`` with every character a terminal would act on written as a visible escape (``\x1b``)."""
    return _UNSAFE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class EscapingStream(io.TextIOBase):
    """A text stream that escapes control characters on their way to the real one."""

    def __init__(self, inner: Any):
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(escape_controls(text))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return bool(self._inner.isatty())

    def fileno(self) -> int:
        return int(self._inner.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._inner, "encoding", "utf-8"))
