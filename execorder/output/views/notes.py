"""The words of a profile's notes: each fallback the policy took, one line.

The command line prints them after ``execorder: note: `` on stderr;
``Note.message`` in Python asks this module.
"""

from __future__ import annotations

from execorder.report.notes import Note, NoteKind


def note_text(note: Note) -> str:
    """One line for a person: what failed, and what was done instead."""
    if note.kind is NoteKind.BUILT_ON_CPU:
        failed = f"building {note.subject} on the meta device failed"
        return f"{failed} ({note.reason}); built it on CPU"
    if note.kind is NoteKind.RETRIED_ON_CPU:
        return (
            f"forward failed on the meta device ({note.reason}); the model fits in memory, "
            "so it ran again on CPU"
        )
    return f"forward needs real values on the meta device ({note.reason}); reran it on CPU"
