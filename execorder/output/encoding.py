"""Text as a stream's encoding can write it: ASCII stand-ins on an ASCII or code-page console."""

from __future__ import annotations

ASCII = {
    "…": "...",
    "─": "-",
    "━": "=",
    "│": "|",
    "├": "+",
    "└": "`",
    "×": "x",
    "µ": "u",
    "✅": "[ok]",
    "⚠️": "[!]",
    "❌": "[x]",
}


def encodable(text: str, encoding: str) -> str:
    """``text`` as ``encoding`` can write it: ASCII stand-ins for glyphs, ``?`` for the rest."""
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        pass
    for glyph, stand_in in ASCII.items():
        text = text.replace(glyph, stand_in)
    try:
        return text.encode(encoding, errors="replace").decode(encoding)
    except LookupError:
        return text.encode("ascii", errors="replace").decode("ascii")
