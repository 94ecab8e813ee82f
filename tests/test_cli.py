"""The command line, through Typer's CliRunner (and a subprocess where it matters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from execorder.cli import app

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SEED = f"{SAMPLES}/seed.py:Model"
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_trace_json_to_stdout_is_only_json() -> None:
    result = invoke("trace", SEED, "--concrete", "run_all_layers=true", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target"] == SEED
    assert data["mode"] == "fx"
    assert data["concrete_args"] == {"run_all_layers": True}
    assert [p["name"] for p in data["unused"]] == ["weight_unused"]
    assert data["modules"][0]["uses"][0] == {
        "module": "layer0",
        "params": ["layer0.weight", "layer0.bias"],
    }


def test_trace_json_to_output_file(tmp_path: Path) -> None:
    out = tmp_path / "order.json"
    result = invoke("trace", SEED, "-c", "run_all_layers=false", "-f", "json", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    data = json.loads(out.read_text())
    assert [p["name"] for p in data["unused"]] == ["weight2", "weight_unused", "layer1.weight"]
    assert not list(tmp_path.glob("*.tmp"))


def test_trace_table_to_output_file(tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    result = invoke("trace", SEED, "-c", "run_all_layers=true", "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "Module forward order" in text and "weight_unused" in text
    assert "\x1b[" not in text


def test_init_options_reach_the_constructor() -> None:
    result = invoke(
        "trace",
        f"{SAMPLES}/reuse.py:Reuse",
        "--init",
        "repeats=4",
        "--init",
        "width=3",
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["modules"]].count("block") == 4
    assert data["params"][0]["shape"] == [3, 3]


@pytest.mark.processes
def test_dotted_target_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "cwd_model_for_test.py").write_text(
        "import torch\nclass Net(torch.nn.Linear):\n"
        "    def __init__(self):\n        super().__init__(2, 2)\n"
    )
    code = "from execorder.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "trace", "cwd_model_for_test:Net", "-f", "json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["params_used"] == 2


def test_meta_fallback_note_goes_to_stderr() -> None:
    result = invoke("trace", "models:NeedsRealTensors", "-f", "json")
    assert result.exit_code == 0, result.output
    assert "built it on CPU" in result.stderr
    assert json.loads(result.stdout)["summary"]["params_used"] == 2


def test_table_sections_and_depth_limit() -> None:
    result = invoke("trace", f"{SAMPLES}/transformer.py:Transformer", "--depth", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for heading in ("Summary", "Module forward order", "Parameter forward order", "No unused"):
        assert heading in out
    assert "blocks.0.attn" not in out.split("Parameter forward order")[0]
    assert "calls nested deeper than 1 hidden" in out


ERRORS = [
    pytest.param(["trace", "no_such_pkg:Net"], "no module named 'no_such_pkg'", id="module"),
    pytest.param(["trace", "nowhere/net.py:Net"], "no such file", id="file"),
    pytest.param(["trace", f"{SAMPLES}/seed.py:Nope"], "has no attribute 'Nope'", id="attr"),
    pytest.param(["trace", "models:not_a_module"], "not an nn.Module", id="not-module"),
    pytest.param(["trace", "models:NeedsWidth"], "needs width: pass --init width=", id="ctor-args"),
    pytest.param(
        ["trace", "models:NeedsWidth", "--init", "width=0"],
        "ValueError: width must be positive",
        id="ctor-raises",
    ),
    pytest.param(["trace", SEED, "--concrete", "oops"], "expects NAME=VALUE", id="malformed"),
    pytest.param(
        ["trace", SEED, "--concrete", "all=true"],
        "has no argument 'all'; its arguments are: x, run_all_layers",
        id="unknown-concrete",
    ),
    pytest.param(
        ["trace", SEED],
        "control flow depends on argument 'run_all_layers'; "
        "pin it with --concrete run_all_layers=VALUE",
        id="control-flow",
    ),
    pytest.param(["trace", "models:Raising"], "ValueError: boom in forward", id="forward-raises"),
    pytest.param(
        ["trace", SEED, "-c", "run_all_layers=1", "-o", "/nonexistent-dir/x.json"],
        "folder /nonexistent-dir does not exist",
        id="output-folder",
    ),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_user_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("execorder: error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_syntax_error_in_user_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("class Net(:\n    pass\n")
    result = invoke("trace", f"{bad}:Net")
    assert result.exit_code == 2
    assert f"syntax error in {bad}, line 1" in result.stderr


def test_unwritable_output_is_refused_before_tracing(tmp_path: Path) -> None:
    result = invoke("trace", SEED, "-c", "run_all_layers=1", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "is a directory" in result.stderr
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = invoke("trace", SEED, "-c", "run_all_layers=1", "-o", str(locked / "x.json"))
        assert result.exit_code == 2
        assert "permission denied" in result.stderr


def test_unknown_format_is_a_usage_error() -> None:
    result = invoke("trace", SEED, "--format", "xml")
    assert result.exit_code == 2
    assert "'xml' is not one of 'table', 'json'" in result.output


def test_debug_shows_the_traceback() -> None:
    result = invoke("trace", "models:Raising", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert "boom in forward" in result.stderr


def test_version() -> None:
    from execorder import __version__

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"execorder {__version__}"


def _python(*code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.processes
def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from execorder.cli import main\n"
        "sys.argv = ['execorder', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
    )
    result = _python("-c", code)
    assert "Commands" in result.stdout
    assert result.stdout.strip().endswith("torch not loaded"), result.stdout + result.stderr


@pytest.mark.processes
def test_python_dash_m() -> None:
    result = _python("-m", "execorder", "trace", SEED, "-c", "run_all_layers=true", "-f", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["params_unused"] == 1
    assert result.stderr == ""


@pytest.mark.processes
def test_the_program_leaves_with_the_commands_code_and_without_teardown() -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
        "from execorder.cli import run\n"
        f"sys.argv = ['execorder', 'trace', {SEED!r}, '-c', 'run_all_layers=false', "
        "'--fail-on', 'unused', '-f', 'json']\n"
        "run()\n"
    )
    result = _python("-c", code)
    assert result.returncode == 1, result.stderr  # the gate's code
    assert json.loads(result.stdout)["kind"] == "report"  # flushed before leaving
    assert "check failed: unused" in result.stderr and "teardown ran" not in result.stderr
    in_python = _python(
        "-c",
        code.replace("from execorder.cli import run", "from execorder.cli import main").replace(
            "run()", "main()"
        ),
    )
    assert in_python.returncode == 1 and "teardown ran" in in_python.stderr
