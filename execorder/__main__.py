"""``python -m execorder``."""

from execorder.cli import run

run()
