"""Profiling for the command line: one model, a spinner while it works, notes as they come."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from execorder.cli.options import ModelOptions

T = TypeVar("T")


def say(text: str) -> None:
    """One line on stderr, in what its encoding can write."""
    from execorder.output.encoding import encodable

    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr.write(encodable(text, encoding) + "\n")
    sys.stderr.flush()


def said(lines: list[str]) -> bool:
    """Each line on stderr, as execorder's; whether there was any."""
    for line in lines:
        say(f"execorder: {line}")
    return bool(lines)


NOTE_REASON = 120  # characters of a note's reason shown; --debug shows it whole


def _note(note: Any, debug: bool) -> None:
    reason = note.reason
    if len(reason) > NOTE_REASON and not debug:
        reason = reason[:NOTE_REASON].rsplit(" ", 1)[0] + " …"
    from execorder.output.views.notes import note_text

    say(f"execorder: note: {note_text(dataclasses.replace(note, reason=reason))}")


@contextmanager
def _spinner(first: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr, when it is a terminal; yields a function that changes its text."""
    if not sys.stderr.isatty():
        yield lambda _: None
        return
    from rich.console import Console

    with Console(stderr=True, highlight=False).status(f"{first}…") as status:
        yield lambda text: status.update(f"{text}…")


def _memory_arguments(options: ModelOptions, budget: int | None, one_device: bool) -> Any:
    """What the profiler measures, and against what budget: one device's step (by default
    against the device's own memory), nothing where the command measures one rank itself
    (``fsdp``), and a budget without ``--memory`` passed on for the library to refuse."""
    if not options.memory:
        return {"memory": None, "memory_budget": budget}
    if not one_device:
        return {"memory": None, "memory_budget": None}
    optimizer = getattr(options.optimizer, "value", "adamw")
    return {"memory": optimizer, "memory_budget": "device" if budget is None else budget}


class Session:
    """One model, profiled under the options; notes go to stderr as they are taken."""

    def __init__(
        self,
        options: ModelOptions,
        *,
        input_keywords: dict[str, Any] | None = None,
        quiet: bool = False,
        one_device: bool = True,
    ) -> None:
        options.check()
        self.debug, self.quiet = options.debug, quiet
        init_kwargs = options.init_kwargs()
        budget = options.budget()
        self._say: Callable[[str], None] = lambda _: None
        self._shown = 0
        with self._spinner("Loading torch"):
            with warnings.catch_warnings():
                # torch warns on import when NumPy is absent; execorder never needs it.
                warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
                from execorder.loading import Inputs, resolve_inputs
                from execorder.profiling import Profiler

                factory = resolve_inputs(options.inputs) if options.inputs else None

            given = Inputs(
                factory, options.input or [], name=options.inputs, keywords=input_keywords
            )
            self.profiler = Profiler(
                options.target,
                init_kwargs=init_kwargs,
                inputs=given,
                mode=options.mode,
                device=options.device.value if options.device else None,
                backward=options.backward,
                assume=options.assume,
                seed=options.seed,
                progress=lambda text: self._say(text),
                timing=options.timing,
                **_memory_arguments(options, budget, one_device),
                memory_foreach=options.foreach,
            )
        self._flush()

    @contextmanager
    def _spinner(self, first: str) -> Iterator[None]:
        # The model's own prints go to stderr: stdout is the report's (--format json).
        spinning = _spinner(first) if not self.quiet else contextlib.nullcontext(lambda _: None)
        with spinning as say, contextlib.redirect_stdout(sys.stderr):
            self._say = say
            try:
                yield
            finally:
                self._say = lambda _: None

    def _flush(self) -> None:
        """Print the notes not printed yet."""
        notes = self.profiler.notes
        for note in notes[self._shown :] if not self.quiet else ():
            _note(note, self.debug)
        self._shown = len(notes)

    def _noting(self, call: Callable[[], T]) -> T:
        """Run ``call``; print the notes it added, also when it fails."""
        try:
            return call()
        finally:
            self._flush()

    def run(self, concrete_args: dict[str, Any], *, seed: int | bool | None = True) -> Any:
        """The report of one forward (``seed``: the run's own, if not the model's)."""
        with self._spinner("Profiling"):
            return self._noting(lambda: self.profiler.run(concrete_args, seed=seed)).report

    def work(self, call: Callable[[Any], T], doing: str = "Profiling") -> T:
        """``call(profiler)`` (the sweep, an FSDP2 plan, its memory), with a spinner saying
        ``doing``; the notes it took printed."""
        with self._spinner(doing):
            return self._noting(lambda: call(self.profiler))
