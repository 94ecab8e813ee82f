"""The CI workflow on the command line: diff, baselines, sweeps, Markdown, schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from execorder.cli import app

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SEED = f"{SAMPLES}/seed.py:Model"
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


@pytest.fixture
def reports(tmp_path: Path) -> dict[str, Path]:
    """Seed reports with the branch taken and not, written by the CLI."""
    paths = {}
    for flag in ("true", "false"):
        path = tmp_path / f"seed-{flag}.json"
        result = invoke(
            "trace", SEED, "-c", f"run_all_layers={flag}", "-f", "json", "-o", str(path)
        )
        assert result.exit_code == 0, result.output
        paths[flag] = path
    return paths


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_diff_of_equal_reports_exits_0(reports: dict[str, Path], fmt: str) -> None:
    result = invoke("diff", str(reports["true"]), str(reports["true"]), "-f", fmt)
    assert result.exit_code == 0, result.output
    if fmt == "json":
        assert json.loads(result.stdout)["equivalent"] is True
    else:
        assert "no change" in result.stdout.lower()


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_diff_of_different_reports_exits_1(reports: dict[str, Path], fmt: str) -> None:
    result = invoke("diff", str(reports["true"]), str(reports["false"]), "-f", fmt)
    assert result.exit_code == 1, result.output
    if fmt == "json":
        data = json.loads(result.stdout)
        assert data["counts"]["calls_removed"] == 4
        assert {p["name"] for p in data["params"] if p["what"] == "became unused"} == {
            "weight2",
            "layer1.weight",
        }
    else:
        assert "layer1" in result.stdout and "became unused" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("not json", "not JSON"),
        ('{"kind": "report", "schema_version": 99}', "schema_version 99"),
    ],
)
def test_diff_bad_input_exits_2(
    reports: dict[str, Path], tmp_path: Path, content: str | None, message: str
) -> None:
    other = tmp_path / "other.json"
    if content is not None:
        other.write_text(content)
    result = invoke("diff", str(reports["true"]), str(other))
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_diff_markdown_golden(reports: dict[str, Path], golden: Callable[[str, str], None]) -> None:
    result = invoke("diff", str(reports["true"]), str(reports["false"]), "-f", "markdown")
    text = result.stdout.replace(str(SAMPLES), "sample_models")
    assert "```diff" in text and "\n-   layer1  [Linear]" in text
    golden("diff_seed.md", text)


def test_trace_markdown_golden(golden: Callable[[str, str], None]) -> None:
    result = invoke("trace", SEED, "-c", "run_all_layers=true", "-f", "markdown")
    assert result.exit_code == 0, result.output
    assert "<details>" in result.stdout and "| `weight_unused` |" in result.stdout
    golden("seed.md", result.stdout.replace(str(SAMPLES), "sample_models"))


def test_baseline_flow(tmp_path: Path) -> None:
    base = tmp_path / "order.json"
    missing = invoke("trace", SEED, "-c", "run_all_layers=true", "--baseline", str(base))
    assert missing.exit_code == 2
    assert "create it with --update-baseline" in missing.stderr

    created = invoke("trace", SEED, "-c", "run_all_layers=true", "--baseline", str(base),
                     "--update-baseline", "-f", "json")  # fmt: skip
    assert created.exit_code == 0, created.output
    assert json.loads(base.read_text()) == json.loads(created.stdout)

    same = invoke("trace", SEED, "-c", "run_all_layers=true", "--baseline", str(base))
    assert same.exit_code == 0, same.output
    assert "No change" in same.stdout

    changed = invoke("trace", SEED, "-c", "run_all_layers=false", "--baseline", str(base),
                     "-f", "json")  # fmt: skip
    assert changed.exit_code == 1
    assert json.loads(changed.stdout)["kind"] == "diff"

    updated = invoke("trace", SEED, "-c", "run_all_layers=false", "--baseline", str(base),
                     "--update-baseline")  # fmt: skip
    assert updated.exit_code == 0
    assert json.loads(base.read_text())["concrete_args"] == {"run_all_layers": False}


def test_update_baseline_needs_baseline() -> None:
    result = invoke("trace", SEED, "-c", "run_all_layers=1", "--update-baseline")
    assert result.exit_code == 2
    assert "--update-baseline needs --baseline FILE" in result.stderr


def test_seed_sweep_json() -> None:
    result = invoke("trace", SEED, "--sweep", "run_all_layers=true,false", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    status = {p["name"]: p["status"] for p in data["params"]}
    assert {n for n, s in status.items() if s == "some"} == {"layer1.weight", "weight2"}
    assert {n for n, s in status.items() if s == "never"} == {"weight_unused"}
    assert [c["args"] for c in data["combinations"]] == [
        {"run_all_layers": True},
        {"run_all_layers": False},
    ]
    assert data["summary"] == {"always": 5, "some": 2, "never": 1}


def test_sweep_cross_product_with_a_fixed_argument() -> None:
    result = invoke("trace", "models:Branchy", "--sweep", "flag=true,false",
                    "--sweep", "mode=plain,double", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["combinations"]) == 4
    assert data["combinations"][1]["args"] == {"flag": True, "mode": "double"}
    assert {p["name"]: p["used_in"] for p in data["params"]} == {
        "lin.weight": [0, 1],
        "lin.bias": [0, 1],
    }
    fixed = invoke("trace", "models:Branchy", "--sweep", "flag=true,false", "-c", "mode=plain",
                   "-f", "json")  # fmt: skip
    assert json.loads(fixed.stdout)["fixed"] == {"mode": "plain"}


def test_sweep_table_and_markdown(golden: Callable[[str, str], None]) -> None:
    table = invoke("trace", SEED, "--sweep", "run_all_layers=true,false")
    assert table.exit_code == 0
    assert "Branch-dependent: used or given a gradient" in table.stdout
    assert "Never used (1)" in table.stdout
    md = invoke("trace", SEED, "--sweep", "run_all_layers=true,false", "-f", "markdown")
    assert "Branch-dependent: used or given a gradient" in md.stdout
    golden("sweep_seed.md", md.stdout.replace(str(SAMPLES), "sample_models"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "run_all_layers"], "--sweep expects NAME=V1,V2"),
        (["--sweep", "run_all_layers="], "has no values"),
        (["--sweep", "run_all_layers=1", "-c", "run_all_layers=1"], "both swept"),
        (["--sweep", "run_all_layers=1", "--sweep", "run_all_layers=0"], "more than once"),
        (["--sweep", "nope=1,2"], "has no argument 'nope'"),
        (["--sweep", "run_all_layers=1", "--baseline", "x.json"], "cannot be combined"),
        (["-c", "run_all_layers=1", "--fail-on", "branch"], "--fail-on branch needs --sweep"),
    ],
)
def test_sweep_errors(args: list[str], message: str) -> None:
    result = invoke("trace", SEED, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_sweep_names_the_combination_that_fails() -> None:
    result = invoke("trace", "models:Branchy", "--sweep", "flag=true,false")
    assert result.exit_code == 2
    assert "with flag=True: While tracing Branchy.forward" in result.stderr


def test_sweep_json_list_values() -> None:
    from execorder.cli.values import parse_sweep

    assert parse_sweep("shape=[[1, 2], [3]]") == ("shape", [[1, 2], [3]])
    assert parse_sweep("mode=a, b ,c") == ("mode", ["a", "b", "c"])
    assert parse_sweep("n=1,2.5,none") == ("n", [1, 2.5, None])


@pytest.mark.processes
def test_the_documented_workflow_check_step_runs_as_written(tmp_path: Path) -> None:
    """docs/ci.md: the GitHub Actions step, run by bash with the seed model as MODEL."""
    import os
    import re
    import shutil
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parent.parent / "docs" / "ci.md").read_text()
    workflow = re.search(r"```yaml\n(# \.github/workflows.*?)```", doc, re.S)
    assert workflow is not None
    step = re.search(r"id: check\n\s+run: \|\n((?:          .*\n)+)", workflow[1])
    assert step is not None
    script = "\n".join(line[10:] for line in step[1].splitlines())
    shutil.copytree(SAMPLES, tmp_path / "sample_models")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MODEL": "sample_models/seed.py:Model --concrete run_all_layers=true",
        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
    }
    base = invoke("trace", SEED, "-c", "run_all_layers=false", "-f", "json",
                  "-o", str(tmp_path / "execorder-baseline.json"))  # fmt: skip
    assert base.exit_code == 0, base.output
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "github_output").read_text() == "status=1\n"
    comment = (tmp_path / "comment.md").read_text()
    assert comment.startswith("### execorder diff: ")
    assert "### execorder: `sample_models/seed.py:Model` (fx trace)" in comment


def test_a_sweep_can_be_gated_and_names_every_parameter_that_misses_a_gradient() -> None:
    result = invoke("trace", SEED, "--sweep", "run_all_layers=true,false",
                    "--fail-on", "branch,unused,dead,external", "-f", "json")  # fmt: skip
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    # weight1 is used in both runs but gets a gradient in one: branch-dependent.
    assert data["findings"]["branch"] == [
        "weight1", "weight2", "layer1.weight", "layer2.0.weight", "layer2.2.weight",
    ]  # fmt: skip
    assert data["findings"]["unused"] == ["weight_unused"] and data["findings"]["dead"] == []
    status = {p["name"]: (p["status"], p["gradient"]) for p in data["params"]}
    assert status["weight1"] == ("always", "some") and status["layer0.weight"] == (
        "always",
        "always",
    )
    assert "execorder: check failed: branch: 5 (weight1, " in result.stderr
    assert "execorder: check failed: unused: 1 (weight_unused)" in result.stderr
    steady = invoke("trace", SEED, "--sweep", "run_all_layers=true", "--fail-on", "branch")
    assert steady.exit_code == 0, steady.output


def test_frozen_parameters_are_marked_in_a_sweep() -> None:
    import models

    import execorder
    from execorder.output.terminal import draw, plain_text
    from execorder.output.views import sweep_view

    result = execorder.sweep(
        lambda args: execorder.trace(models.Frozen()), axes=[("run", [1, 2])], target="frozen"
    )
    text = plain_text(draw(sweep_view(result)))
    never = text.split("Never used")[1].split("\n\n")[1]
    assert "unused_frozen   frozen" in never and "unused          \n" not in never
    assert result.findings("unused") == ("unused",)  # frozen ones are not findings
