"""The CI gate (--fail-on) and the ddp-indices command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from execorder.analysis import parse_indices
from execorder.cli import app
from execorder.errors import IndicesError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SEED = f"{SAMPLES}/seed.py:Model"
TIED = f"{SAMPLES}/tied.py:TiedLM"
runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "code", "failed"),
    [
        ([SEED, "-c", "run_all_layers=true", "--fail-on", "unused"], 1, ["unused: 1"]),
        ([SEED, "-c", "run_all_layers=true", "--fail-on", "dead"], 1, ["dead: 5"]),
        (
            [SEED, "-c", "run_all_layers=true", "--fail-on", "unused,dead,external"],
            1,
            ["unused: 1 (weight_unused)", "dead: 5"],
        ),
        ([SEED, "-c", "run_all_layers=true", "--fail-on", "external"], 0, []),
        ([TIED, "--fail-on", "unused,dead,external"], 0, []),
        (["models:ExternalUse", "--fail-on", "external"], 1, ["external: 1 (lin.weight used by"]),
        (["models:Frozen", "--fail-on", "unused"], 1, ["unused: 1 (unused)"]),
    ],
)
def test_fail_on_exit_codes(args: list[str], code: int, failed: list[str]) -> None:
    result = runner.invoke(app, ["trace", *args, "-f", "json"])
    assert result.exit_code == code, result.output
    # The report is printed whatever the verdict.
    assert json.loads(result.stdout)["schema_version"] == 1
    for line in failed:
        assert f"execorder: check failed: {line}" in result.stderr
    if not failed:
        assert result.stderr == ""


def test_fail_on_frozen_unused_does_not_count() -> None:
    result = runner.invoke(app, ["trace", "models:Frozen", "--fail-on", "unused", "-f", "json"])
    assert "unused_frozen" not in result.stderr


@pytest.mark.parametrize("value", ["deadd", "unused,bogus", ","])
def test_fail_on_unknown_category_is_exit_2(value: str) -> None:
    result = runner.invoke(app, ["trace", SEED, "-c", "run_all_layers=1", "--fail-on", value])
    assert result.exit_code == 2
    assert "choose from: unused, dead, external" in result.stderr
    assert result.stdout == ""


def test_fail_on_with_table_output_prints_tables_first() -> None:
    result = runner.invoke(app, ["trace", SEED, "-c", "run_all_layers=1", "--fail-on", "dead"])
    assert result.exit_code == 1
    assert "Dead parameters, with no gradient (5)" in result.stdout
    assert "fails: 6 trainable parameters get no gradient" in result.stdout


def test_ddp_indices_json_names_each_index() -> None:
    line = "Parameter indices which did not receive grad for rank 0: 0 1 2 5 6 7"
    result = runner.invoke(
        app, ["ddp-indices", SEED, line, "-c", "run_all_layers=true", "-f", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(e["index"], e["name"], e["status"]) for e in data["indices"]] == [
        (0, "weight1", "dead"),
        (1, "weight2", "dead"),
        (2, "weight_unused", "unused"),
        (5, "layer1.weight", "dead"),
        (6, "layer2.0.weight", "dead"),
        (7, "layer2.2.weight", "dead"),
    ]
    assert data["agrees"] is True
    assert data["predicted_not_named"] == []


def test_ddp_indices_skips_frozen_parameters_when_numbering() -> None:
    result = runner.invoke(app, ["ddp-indices", "models:Frozen", "0 5 6", "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [e["name"] for e in data["indices"]] == ["unused", "aux.weight", "aux.bias"]
    assert data["agrees"] is True


def test_ddp_indices_table_flags_disagreement() -> None:
    result = runner.invoke(app, ["ddp-indices", SEED, "0,3", "-c", "run_all_layers=true"])
    assert result.exit_code == 0, result.output
    assert "used: expected a gradient" in result.stdout
    assert "execorder also predicts no gradient for: weight2" in result.stdout


def test_ddp_indices_out_of_range() -> None:
    result = runner.invoke(app, ["ddp-indices", SEED, "0 9", "-c", "run_all_layers=true"])
    assert result.exit_code == 2
    assert "index 9 is out of range: the model has 8 trainable parameters" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0 1 2 5 6 7", (0, 1, 2, 5, 6, 7)),
        ("0,1, 2", (0, 1, 2)),
        ("Parameter indices which did not receive grad for rank 0: 3 4", (3, 4)),
        ("7", (7,)),
    ],
)
def test_parse_indices(text: str, expected: tuple[int, ...]) -> None:
    assert parse_indices(text) == expected


@pytest.mark.parametrize("text", ["", "rank 0:", "0 one 2", "-1"])
def test_parse_indices_rejects(text: str) -> None:
    with pytest.raises(IndicesError):
        parse_indices(text)
