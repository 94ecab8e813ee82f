"""The notes of a profile: each fallback the mode and device policy took, and why."""

from __future__ import annotations

from dataclasses import dataclass

from execorder.report.kinds import Word


class NoteKind(Word):
    """A fallback the policy took."""

    BUILT_ON_CPU = "built-on-cpu"  # building on the meta device failed
    RERAN_ON_CPU = "reran-on-cpu"  # forward needed real values on the meta device
    RETRIED_ON_CPU = "retried-on-cpu"  # forward failed on meta otherwise, and the model fits


@dataclass(frozen=True, slots=True)
class Note:
    """One fallback taken, and why.

    Attributes:
        kind: Which fallback.
        reason: The failure that led to it, one line.
        subject: What it concerns: the constructor call for ``BUILT_ON_CPU``.
    """

    kind: NoteKind
    reason: str
    subject: str = ""

    @property
    def message(self) -> str:
        """One line for a person, as its view writes it."""
        from execorder.output.views.notes import note_text

        return note_text(self)

    def __str__(self) -> str:
        return self.message
