"""stdout as it really is: a console that cannot write UTF-8, a reader that stops reading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from execorder.cli import app

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SEED = f"{SAMPLES}/seed.py:Model"


@pytest.mark.parametrize("encoding", ["ascii", "cp1252"])
@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_a_console_that_cannot_write_utf8_gets_ascii(encoding: str, fmt: str) -> None:
    runner = CliRunner(charset=encoding)
    result = runner.invoke(app, ["trace", SEED, "-c", "run_all_layers=1", "--max-rows", "2",
                                 "-f", fmt])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout_bytes.decode("ascii")  # nothing outside ASCII
    if fmt == "table":
        assert "\n -------" in text and "... 10 more calls (--max-rows 0 shows all)" in text
    else:
        assert "| DDP check | [x] fails: 6 trainable parameters get no gradient |" in text


def test_errors_and_notes_on_an_ascii_console() -> None:
    args = ["trace", f"{SAMPLES}/moe.py:MoE", "--input", "x=float32[4,16]", "-f", "json"]
    gated = CliRunner(charset="ascii").invoke(app, [*args, "--fail-on", "dead"])
    assert gated.exit_code == 1, gated.output
    assert "experts.0.down.bias, ... (28 more))" in gated.stderr_bytes.decode("ascii")
    noted = CliRunner(charset="ascii").invoke(app, [*args, "--no-assume"])
    assert noted.exit_code == 0, noted.output
    assert "(not assumed), at moe.py:35); reran it on CPU" in noted.stderr_bytes.decode("ascii")


@pytest.mark.processes
def test_a_reader_that_stops_ends_it_quietly() -> None:
    """A closed pipe: no traceback, no 'internal error', exit 141 as SIGPIPE gives."""
    code = (
        "import io, sys\n"
        "class Closed(io.TextIOWrapper):\n"
        "    def write(self, text):\n"
        "        raise BrokenPipeError(32, 'Broken pipe')\n"
        "sys.stdout = Closed(io.BytesIO(), encoding='utf-8')\n"
        "from execorder.cli import main\n"
        f"sys.argv = ['execorder', 'trace', {SEED!r}, '-c', 'run_all_layers=1']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 141, done.stderr.decode()
    assert done.stderr == b""


@pytest.mark.processes
def test_a_real_pipe_to_head_is_quiet() -> None:
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m execorder trace {SEED} -c run_all_layers=1 "
         "--max-rows 0 | head -2"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout.decode().startswith("Summary")
    assert b"Traceback" not in done.stderr and b"error" not in done.stderr
