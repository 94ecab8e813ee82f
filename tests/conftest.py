"""Shared fixtures. ``pytest --update-golden`` rewrites the golden renderings."""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
GOLDEN = Path(__file__).resolve().parent / "golden"

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
for folder in (SAMPLES, Path(__file__).resolve().parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="Rewrite tests/golden/* from current output."
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """Compare text with a golden file, or rewrite it under --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing golden file {name}; run pytest --update-golden"
        assert text == path.read_text(encoding="utf-8"), (
            f"{name} differs from the golden file; if the change is intended, "
            "rerun with --update-golden and review the diff"
        )

    return check


TESTS = Path(__file__).resolve().parent


def run_probe(script: str, *args: object, timeout: int = 240) -> list[dict]:
    """Run ``tests/SCRIPT ARGS...`` (ranks of its own) bounded by ``timeout``; its JSON lines.

    A probe that hangs (ranks waiting on each other) or fails fails the test, with
    the end of what it wrote on stderr. It starts its own process group: a
    ``TORCH_DISTRIBUTED_*`` setting of the test run's is not passed on.
    """
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_DISTRIBUTED")}
    try:
        done = subprocess.run(
            [sys.executable, str(TESTS / script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=TESTS.parent,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script} did not finish in {timeout} s (a hang across ranks?)")
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


class Later(types.ModuleType):
    """A module imported where a test first reads it, not while every worker collects.

    ``sample_models/hf.py`` imports a dozen transformers model classes: seconds a
    worker, for the fast tier's few tests that build one.
    """

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("_"):  # what pytest asks of every name while it collects
            raise AttributeError(attr)
        return getattr(importlib.import_module(self.__name__), attr)


def needs(package: str, reason: str) -> pytest.MarkDecorator:
    """Skip where ``package`` is not installed, found without importing it."""
    return pytest.mark.skipif(find_spec(package) is None, reason=reason)
