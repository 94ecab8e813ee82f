"""How execorder spells what every layer writes: the root module, a byte count, arguments.

The bottom of the house: errors, records and views all import these, so the
root reads ``(root)`` and a size ``1.5 KB`` in every message, table and file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROOT = ""
"""The root module's qualified name."""
ROOT_LABEL = "(root)"
"""The root module's name for a person."""


def label(qualname: str) -> str:
    """A module's qualified name for a person: the root (``""``) as ``(root)``."""
    return qualname or ROOT_LABEL


def size_text(count: float) -> str:
    """A byte count: ``80 B``, ``1.5 KB``, ``275.9 GB``, ``4,000.0 TB``.

    Powers of 1000, with one decimal from a kilobyte on.
    """
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:.0f} B"


def listed(names: Sequence[str], most: int = 3) -> str:
    """The first ``most`` names, and how many more: ``a, b, c and 2 more``."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def ddps_named(names: Sequence[str]) -> str:
    """The DDPs of a recorded step by what they run, ``""`` being the model itself:
    ``the model``, ``encoder and decoder``."""
    shown = [name or "the model" for name in names]
    return ", ".join(shown[:-1]) + " and " * (len(shown) > 1) + shown[-1]


def args_text(args: Mapping[str, Any], *, none: str = "") -> str:
    """Concrete arguments as ``flag=True, n=2``; ``none`` when there are none."""
    return ", ".join(f"{k}={v!r}" for k, v in args.items()) or none


def non_reentrant(own: Sequence[str]) -> str:
    """What to checkpoint with instead, when reentrant checkpoints split a gradient: torch's
    ``use_reentrant=False``, in place of the model's own checkpoint Functions ``own`` if any
    (``use_reentrant`` is no option of theirs)."""
    if not own:
        return "use use_reentrant=False"
    return f"checkpoint with torch.utils.checkpoint(use_reentrant=False) in place of {listed(own)}"
