"""The gate is the library's: ``Report.failing`` and ``execorder trace --fail-on`` agree.

Every sample model is profiled by the library and by the command line under
each gate, and the categories the command line fails on are exactly those
``failing`` returns, with the same counts.
"""

from __future__ import annotations

import itertools
import re

import pytest
from typer.testing import CliRunner

import execorder
from execorder.cli.app import app
from execorder.output.views import gate_lines
from execorder.report import Category, gate_categories

runner = CliRunner()

# A target, and the command line's options for it (the library's are derived).
TARGETS = {
    "seed-branch-off": ("sample_models/seed.py:Model", ["-c", "run_all_layers=false"]),
    "seed-all-layers": ("sample_models/seed.py:Model", ["-c", "run_all_layers=true"]),
    "tied": ("sample_models/tied.py:TiedLM", []),
    "reuse": ("sample_models/reuse.py:Reuse", []),
    "moe-on-meta": ("sample_models/moe.py:MoE", ["--input", "x=float32[4,16]"]),
    "moe-proven": ("sample_models/moe.py:MoE", ["--input", "x=float32[4,16]", "--no-assume"]),
}
GATES = [
    combo
    for size in (1, 2)
    for combo in itertools.combinations(
        (Category.UNUSED, Category.DEAD, Category.EXTERNAL, Category.ASSUMPTION), size
    )
]
LINE = re.compile(r"execorder: check failed: (\w+): (\d+) ")


def _library(target: str, options: list[str]) -> execorder.Profile:
    kwargs: dict = {}
    for flag, value in zip(options[::2], options[1::2], strict=False):
        if flag == "-c":
            name, _, text = value.partition("=")
            kwargs.setdefault("concrete_args", {})[name] = text == "true"
        elif flag == "--input":
            kwargs["input_size"] = value.partition("=")[2]
    if "--no-assume" in options:
        kwargs["assume"] = False
    return execorder.profile(target, **kwargs)


@pytest.mark.parametrize("case", TARGETS)
def test_the_command_line_fails_on_what_the_library_says(case: str) -> None:
    target, options = TARGETS[case]
    report = _library(target, options).report
    for gate in GATES:
        expected = {str(c): len(found) for c, found in report.failing(gate).items()}
        fail_on = ",".join(map(str, gate))
        result = runner.invoke(app, ["trace", target, *options, "-f", "json", "--fail-on", fail_on])
        assert result.exit_code == (1 if expected else 0), (gate, result.output)
        printed = {m[1]: int(m[2]) for m in LINE.finditer(result.stderr)}
        assert printed == expected, (case, gate)
        # The lines too: a Python script gets the command line's words.
        lines = [f"execorder: {line}" for line in gate_lines(report.failing(gate))]
        gate_said = [line for line in result.stderr.splitlines() if "check failed" in line]
        assert gate_said == lines, (case, gate)


def test_gating_on_unused_or_dead_gates_on_assumption_too() -> None:
    assert gate_categories(["unused"]) == (Category.UNUSED, Category.ASSUMPTION)
    assert gate_categories(["external", "dead", "external"]) == (
        Category.EXTERNAL,
        Category.DEAD,
        Category.ASSUMPTION,
    )
    assert gate_categories(["external"]) == (Category.EXTERNAL,)
    meta = _library(*TARGETS["moe-on-meta"]).report
    assert meta.on_assumption and Category.ASSUMPTION in meta.failing(["dead"])
    with pytest.raises(ValueError):
        meta.failing(["branch"])


def test_gating_on_outputs_fails_where_a_loss_on_the_main_output_alone_misses_parameters() -> None:
    import models

    assert gate_categories(["unused", "dead"]) == (
        Category.UNUSED,
        Category.DEAD,
        Category.ASSUMPTION,
    )  # opt-in: a loss may read every output
    report = execorder.trace(models.TwoHeads())
    assert dict(report.failing(["outputs"])) == {Category.OUTPUTS: ("value.weight", "value.bias")}
    assert report.failing(["unused", "dead"]) == {}
    assert execorder.trace(models.KeywordParam()).failing(["outputs"]) == {}

    two_heads = ["trace", "tests/models.py:TwoHeads", "-f", "json", "-o", "/dev/null"]
    result = runner.invoke(app, [*two_heads, "--fail-on", "outputs"])
    assert result.exit_code == 1, result.output
    assert "execorder: check failed: outputs: 2 (value.weight, value.bias) (only outputs" in (
        result.stderr
    )
    result = runner.invoke(app, [*two_heads, "--fail-on", "outputs", "--sweep", "x=1,2"])
    assert result.exit_code == 2
    assert "--fail-on outputs gates one run's outputs: not with --sweep" in result.stderr
    seed = execorder.profile("sample_models/seed.py:Model", concrete_args={"run_all_layers": True})
    assert seed.report.failing(["outputs"]) == {}


def test_a_sweep_has_no_outputs_finding() -> None:
    from seed import Model

    from execorder.analysis import sweep

    result = sweep(
        lambda args: execorder.trace(Model(), concrete_args=dict(args)),
        axes=[("run_all_layers", [True, False])],
        target="seed",
    )
    with pytest.raises(ValueError, match="one report"):
        result.findings("outputs")
