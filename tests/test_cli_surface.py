"""The command line as users expect it: help, completion, usage errors, narrow terminals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformer import Transformer
from typer.testing import CliRunner

import execorder
from execorder.cli import app
from execorder.output.terminal import plain_text, render_report

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SEED = f"{SAMPLES}/seed.py:Model"
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("args", [["-h"], ["trace", "-h"], ["diff", "-h"], ["ddp-indices", "-h"]])
def test_dash_h_is_help(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: execorder")


def test_the_usage_line_names_the_arguments_plainly() -> None:
    assert "Usage: execorder trace [OPTIONS] TARGET\n" in invoke("trace", "-h").stdout
    assert "Usage: execorder diff [OPTIONS] OLD NEW\n" in invoke("diff", "-h").stdout
    assert "{" not in invoke("ddp-indices", "-h").stdout.splitlines()[0]


MODEL = {"--concrete", "--init", "--device", "--mode", "--input", "--inputs", "--assume", "--seed"}
MEMORY = {"--memory", "--optimizer", "--foreach", "--memory-budget"}
OUT = {"--format", "--output", "--fail-on", "--help", "--debug"}
TAKES = {
    "trace": MODEL
    | MEMORY
    | OUT
    | {"--backward", "--timing", "--depth", "--max-rows"}
    | {"--sweep", "--baseline", "--update-baseline"},
    "fsdp": MODEL
    | MEMORY
    | OUT
    | {"--backward", "--sweep", "--unit", "--layout", "--prefetch"}
    | {"--reshard-after-forward", "--world-size", "--param-dtype", "--reduce-dtype"},
    "ddp-indices": MODEL | {"--format", "--help", "--debug"},
    "ranks": MODEL | OUT | {"--backward", "--nproc", "--timeout"},
}


@pytest.mark.parametrize("command", TAKES)
def test_each_command_takes_the_model_options_it_can_use(command: str) -> None:
    from typer.main import get_command

    click = get_command(app).commands[command]  # type: ignore[attr-defined]
    flags = {o for p in click.params for o in p.opts if o.startswith("--")} | {"--help"}
    assert flags == TAKES[command]
    assert next(p.name for p in click.params if p.param_type_name == "argument") == "target"
    assert click.params[-1].name == "debug"


def test_an_error_names_each_argument_as_the_option_that_gives_it() -> None:
    """The command line tells a library error's argument as ``--`` and its name: an option."""
    from execorder.cli.words import CLI
    from execorder.errors import Arg

    flags = set().union(*TAKES.values())
    assert {CLI.arg(arg) for arg in Arg if arg is not Arg.TARGET} <= flags
    assert CLI.arg(Arg.TARGET) == "TARGET"


def test_ranks_replaces_the_defaults_that_mean_otherwise_in_a_job() -> None:
    from typer.main import get_command

    params = {p.name: p for p in get_command(app).commands["ranks"].params}  # type: ignore[attr-defined]
    assert params["mode"].default.value == "eager" and params["seed"].default is None
    assert "rank r draws with seed r" in (params["seed"].help or "")


BAD = [
    pytest.param(["trace", SEED, "--format", "xml"], "'xml' is not one of", id="choice"),
    pytest.param(["trace", SEED, "--depth", "-1"], "--depth", id="range"),
    pytest.param(["trace", SEED, "--max-rows", "many"], "valid integer", id="int"),
    pytest.param(["trace", SEED, "--formt", "json"], "No such option: --formt", id="option"),
    pytest.param(["trace"], "Missing argument 'TARGET'", id="missing"),
    pytest.param(["tracer", SEED], "No such command 'tracer'", id="command"),
]


@pytest.mark.parametrize(("args", "text"), BAD)
def test_bad_option_values_are_one_plain_line(args: list[str], text: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("execorder: error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr
    assert "-h')" in result.stderr and result.stdout == ""


def _python(*code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.processes
def test_shell_completion_works_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from execorder.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
    )
    env = {"_EXECORDER_COMPLETE": "complete_bash", "COMP_WORDS": "execorder tr", "COMP_CWORD": "1"}
    result = _python("-c", code, env=env)
    assert "trace" in result.stdout.split(), result.stdout + result.stderr
    assert result.stdout.strip().endswith("torch not loaded")
    env = {**env, "COMP_WORDS": "execorder trace x --for", "COMP_CWORD": "3"}
    assert "--format" in _python("-c", code, env=env).stdout
    assert "--install-completion" in invoke("--help").stdout


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_numbers_and_shapes_are_never_cut(width: int) -> None:
    with torch.device("meta"):
        model = Transformer(n_layers=2, dim=4096, vocab=32000, n_heads=32)
    report = execorder.trace(model, target="t")
    text = plain_text(render_report(report), width=width)
    lines = text.splitlines()
    for param in report.params:
        shape = "[" + ", ".join(str(d) for d in param.shape) + "]"
        assert any(shape in line and f"{param.numel:,}" in line for line in lines), (shape, width)
    assert "…" not in text.replace("… ", "")  # only the left-out notes use an ellipsis
    if width >= 80:
        assert all(p.name in text for p in report.params)


def test_plurals_are_right_for_one(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text(
        "import torch\n"
        "class One(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.ones(2))\n"
        "        self.spare = torch.nn.Parameter(torch.ones(1))\n"
        "    def forward(self, x):\n"
        "        return x * self.w\n"
    )
    result = invoke("trace", f"{tmp_path}/one.py:One")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "1 (1 distinct module)" in out
    assert "1 (1 element, 33.3%)" in out
    assert "fails: 1 trainable parameter gets no gradient" in out
    assert "Unused parameters (1)" in out


def test_written_tables_have_no_trailing_spaces(tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    result = invoke("trace", SEED, "-c", "run_all_layers=true", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines and all(line == line.rstrip() for line in lines)
    piped = invoke("trace", SEED, "-c", "run_all_layers=true").stdout.splitlines()
    assert all(line == line.rstrip() for line in piped)


@pytest.mark.parametrize("spec", ["float32[2,6]", "[2,6]"])
def test_an_unnamed_input_is_the_first_positional_argument(spec: str) -> None:
    result = invoke("trace", SEED, "--mode", "eager", "--input", spec, "-c", "run_all_layers=1",
                    "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"] == {"arg0": "float32[2, 6]"}


REFERENCE = (SAMPLES.parent / "docs" / "cli.md").read_text(encoding="utf-8")


def _synopsis(command: str) -> str:
    """The lines of docs/cli.md's synopsis for ``command``."""
    lines = REFERENCE.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"execorder {command} "))
    block = [lines[first]]
    for line in lines[first + 1 :]:
        if not line.startswith(" "):
            break
        block.append(line)
    return "\n".join(block)


@pytest.mark.parametrize("command", [*TAKES, "diff"])
def test_the_synopsis_names_every_option(command: str) -> None:
    """``--help`` is the summary, docs/cli.md the reference: an option it lacks is missed."""
    import re

    from typer.main import get_command

    click = get_command(app).commands[command]  # type: ignore[attr-defined]
    flags = {o for p in click.params for o in p.opts if o.startswith("--")} - {"--help", "--debug"}
    synopsis = _synopsis(command)
    if "the options of trace that choose the run" in synopsis:
        flags -= MODEL | {"--backward"}
    missing = {f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", synopsis)}
    assert not missing, f"docs/cli.md's synopsis of {command} does not name {sorted(missing)}"


def test_the_references_name_every_gate() -> None:
    from execorder.analysis.sharding import CheckKind
    from execorder.report.kinds import Category

    gate = next(line for line in REFERENCE.splitlines() if line.startswith("| `--fail-on"))
    assert not [c.value for c in Category if f"`{c.value}`" not in gate]
    checks = (SAMPLES.parent / "docs" / "fsdp.md").read_text(encoding="utf-8")
    assert not [k.value for k in CheckKind if f"`{k.value}`" not in checks]
    for category in Category:  # the summary in --help names each too
        assert category.value in invoke("trace", "-h").stdout.replace("\n", " ")
    said = "".join(invoke("fsdp", "-h").stdout.split())  # help wraps at hyphens too
    assert not [k.value for k in CheckKind if k.value not in said]
