"""A model's own code cannot end execorder quietly, nor corrupt what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from execorder.cli import app

MODEL = f"{Path(__file__).resolve().parent / 'data' / 'exits.py'}:Net"
ARGS = ["trace", MODEL, "--input", "x=float32[1,2]", "-f", "json", "--fail-on", "dead"]


def test_its_prints_go_to_stderr_so_json_on_stdout_stays_json() -> None:
    result = CliRunner().invoke(app, ARGS, env={"EXIT_AT": ""})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "report"
    for phase in ("at import", "while building", "in forward"):
        assert f"printed {phase}" in result.stderr


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        ("import", "called sys.exit(3) while importing"),
        ("build", "called sys.exit(4) while building Net() (exits.py:"),
        ("forward", "called sys.exit('bye') while running Net.forward (exits.py:"),
    ],
)
def test_a_sys_exit_in_it_is_an_error_never_a_pass(phase: str, message: str) -> None:
    result = CliRunner().invoke(app, ARGS, env={"EXIT_AT": phase})
    assert result.exit_code == 2, result.output  # not 0: a CI gate must not pass
    assert message in result.stderr
    assert result.stderr.splitlines()[-1].startswith("execorder: error: the model's code")
    assert result.stdout == ""


def test_a_sys_exit_under_fx_is_caught_too() -> None:
    result = CliRunner().invoke(app, ["trace", MODEL], env={"EXIT_AT": "forward"})
    assert result.exit_code == 2
    assert "called sys.exit('bye') while tracing Net.forward" in result.stderr
