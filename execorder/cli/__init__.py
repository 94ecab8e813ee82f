"""The command line: a thin layer over the library (parse, call, render, exit code)."""

from execorder.cli.app import app, main, run

__all__ = ["app", "main", "run"]
