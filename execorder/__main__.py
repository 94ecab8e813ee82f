"""``python -m execorder``."""

from execorder.cli import main

main()
