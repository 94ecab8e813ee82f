"""Hostile shapes: deep models, deep JSON, huge allocations. Work, or say why; never crash."""

from __future__ import annotations

import json
from pathlib import Path

import models
import pytest
import torch
from typer.testing import CliRunner

import execorder
from execorder.cli import app
from execorder.errors import TooDeepError
from execorder.recording import module_tree

runner = CliRunner()


def test_a_deep_model_torch_can_run_is_recorded() -> None:
    model = models.nested(200)
    model(torch.ones(1, 2))  # torch itself runs it
    report = execorder.profile(model, input_size=(1, 2)).report
    assert report.summary.calls == 400 and report.modules[-1].depth == 200
    assert module_tree(model).depth == 200


def test_a_model_deeper_than_torch_can_go_says_so() -> None:
    model = models.nested(2000)
    with pytest.raises(RecursionError):
        model(torch.ones(1, 2))  # torch itself cannot run it
    with pytest.raises(TooDeepError, match=r"modules nest 2,000 deep.*lets torch go"):
        execorder.profile(model, input_size=(1, 2))
    with pytest.raises(TooDeepError, match=r"lets torch.fx go"):
        execorder.trace(models.nested(200))
    assert module_tree(model).depth == 2000  # execorder's own walk has no such limit


def test_deep_models_on_the_command_line() -> None:
    result = runner.invoke(app, ["trace", "models:nested", "--input", "x=float32[1,2]"])
    assert result.exit_code == 2 and "internal error" not in result.output
    assert "modules nest 2,000 deep" in result.stderr


def test_a_deeply_nested_json_file_is_refused_clearly(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = runner.invoke(app, ["diff", str(deep), str(deep)])
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"execorder: error: {deep}: not a report (its JSON nests too deeply to read)\n"
    )


def test_a_deeply_nested_value_is_refused_clearly() -> None:
    value = "[" * 5000 + "]" * 5000
    result = runner.invoke(app, ["trace", "models:Branchy", "--input", "x=float32[2,4]",
                                 "-c", f"mode={value}"])  # fmt: skip
    assert result.exit_code == 2
    assert "--concrete mode: a value nests too deeply to read" in result.stderr
    assert json.dumps(execorder.report.jsonable(json.loads("[" * 5 + "]" * 5)))


def test_an_input_too_big_for_memory_is_refused_before_allocating() -> None:
    result = runner.invoke(app, ["trace", "models:Branchy", "--device", "cpu",
                                 "--input", "x=float32[100000,100000,100000]"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--input x=float32[100000, 100000, 100000]: needs 4,000.0 TB on cpu" in result.stderr
    on_meta = runner.invoke(
        app,
        [
            "trace",
            "models:Branchy",
            "--mode",
            "eager",
            "--input",
            "x=float32[100000,100000,4]",
            "-f",
            "json",
        ],
    )
    assert on_meta.exit_code == 0, on_meta.output  # on meta, a size costs nothing
    wrong = runner.invoke(app, ["trace", "models:Branchy", "--input", "x=float32[100000,100000,5]"])
    assert wrong.exit_code == 2 and "must have same reduction dim" in wrong.stderr  # the real error
    assert "ran again on CPU" not in wrong.stderr  # its inputs could not fit there
