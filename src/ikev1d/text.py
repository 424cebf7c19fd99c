"""Text a peer chose, made safe to print.

Identities, certificate subjects, XAUTH user names and similar text arrive
from the network; a newline or a terminal escape in them would forge log
lines or rewrite an operator's screen. Everything that shows such text (logs,
``ikev1d status``) passes it through :func:`printable` first.
"""

from __future__ import annotations

__all__ = ["printable"]

#: Longest peer-chosen text shown; the rest is elided (an ID payload may be 64 KB).
MAX_SHOWN = 256


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str | None, limit: int = MAX_SHOWN) -> str:
    """``text`` with control and other non-printable characters (C0, DEL, C1,
    line and paragraph separators, bidirectional overrides, ...) written as
    ``\\xNN``/``\\uNNNN`` escapes, and cut to ``limit`` characters; None gives ""."""
    if text is None:
        return ""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
