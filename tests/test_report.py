"""Report records: immutability, JSON round trip, schema checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from models import ExternalUse, Frozen
from seed import Model
from tied import TiedLM

import execorder
from execorder.analysis import diff_reports
from execorder.errors import SchemaError
from execorder.report import SCHEMA_VERSION, Mode, Report, load_report


@pytest.mark.parametrize("build", [Model, ExternalUse, Frozen])
def test_json_round_trip_keeps_every_category(build: type) -> None:
    report = execorder.trace(build(), concrete_args=_concrete(build))
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def _concrete(build: type) -> dict[str, bool]:
    return {"run_all_layers": True} if build is Model else {}


def test_json_round_trip() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True}, target="x.py:Model")
    data = json.loads(json.dumps(report.to_dict()))
    assert Report.from_dict(data) == report
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["target"] == "x.py:Model"
    assert data["mode"] == "fx"
    assert data["concrete_args"] == {"run_all_layers": True}


def test_json_shape() -> None:
    data = execorder.trace(TiedLM()).to_dict()
    assert data["modules"][0]["name"] == ""
    assert data["modules"][0]["depth"] == 0
    assert {"name", "type", "depth", "uses"} <= set(data["modules"][1])
    first = data["params"][0]
    assert first == {
        "name": "embed.weight",
        "aliases": ["lm_head.weight"],
        "index": 0,
        "ddp_index": 0,
        "shape": [32, 8],
        "dtype": "float32",
        "numel": 256,
        "owner": "embed",
        "requires_grad": True,
        "rests_on_assumption": False,
        "first_module": "embed",
        "first_call": 1,
        "assumed": False,
        "dead": False,
    }
    assert set(data["summary"]) >= {"params_total", "params_used", "numel_unused", "params_dead"}
    assert data["dead"] == [] and data["external"] == []


def test_unused_entries() -> None:
    data = execorder.trace(Model(), concrete_args={"run_all_layers": True}).to_dict()
    assert data["unused"] == [
        {
            "name": "weight_unused",
            "aliases": [],
            "index": 2,
            "ddp_index": 2,
            "shape": [2, 2],
            "dtype": "float32",
            "numel": 4,
            "owner": "",
            "requires_grad": True,
            "rests_on_assumption": False,
        }
    ]
    dead = data["dead"][0]
    assert (dead["name"], dead["first_module"], dead["dead"]) == (
        "layer2.0.weight",
        "layer2.0",
        True,
    )


def test_records_are_frozen() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.target = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.concrete_args["run_all_layers"] = False  # type: ignore[index]


def test_wrong_schema_version_is_refused() -> None:
    data = execorder.trace(Model(), concrete_args={"run_all_layers": True}).to_dict()
    data["schema_version"] = 99
    with pytest.raises(SchemaError, match="schema_version 99"):
        Report.from_dict(data)
    del data["schema_version"]
    with pytest.raises(SchemaError):
        Report.from_dict(data)


def test_missing_field_is_a_schema_error() -> None:
    data = execorder.trace(Model(), concrete_args={"run_all_layers": True}).to_dict()
    del data["modules"]
    with pytest.raises(SchemaError, match="modules"):
        Report.from_dict(data)


def test_unknown_param_lookup() -> None:
    report = execorder.trace(TiedLM())
    with pytest.raises(KeyError):
        report.param("nope")


def test_concrete_args_are_made_json_safe() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True})
    assert json.dumps(report.to_dict())
    odd = dataclasses.replace(report, concrete_args={"x": object(), "y": float("inf")})
    assert isinstance(odd.concrete_args["x"], str)
    assert odd.concrete_args["y"] == "inf"


def test_optional_fields_may_be_absent() -> None:
    data = execorder.trace(Model(), concrete_args={"run_all_layers": True}).to_dict()
    del data["backward"], data["inputs"]
    report = Report.from_dict(data)
    assert report.backward is None and dict(report.inputs) == {}


DATA = Path(__file__).resolve().parent / "data"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("seed-v1.json", lambda: execorder.trace(Model(), concrete_args={"run_all_layers": True})),
        ("external-v1.json", lambda: execorder.trace(ExternalUse())),
        ("frozen-v1.json", lambda: execorder.trace(Frozen())),
    ],
)
def test_reports_written_before_the_redesign_still_load(name: str, make: Any) -> None:
    """tests/data/*-v1.json were written by execorder before its library-first redesign."""
    old = load_report(DATA / name)
    new = make()
    assert old.schema_version == SCHEMA_VERSION == 1
    assert _without_added(old.to_dict()) == _without_added(new.to_dict())
    assert diff_reports(old, new).equivalent
    # JSON's "call" is the Python record's repeat count.
    assert [c.repeat for c in old.modules] == [
        c["call"] for c in json.loads((DATA / name).read_text())["modules"]
    ]


def test_an_old_eager_report_with_a_backward_order_loads() -> None:
    old = load_report(DATA / "seed-eager-backward-v1.json")
    assert old.mode is Mode.EAGER and dict(old.inputs) == {"x": "float32[2, 6]"}
    assert old.backward is not None and sorted(old.backward) == ["layer0.bias", "layer0.weight"]
    # Written before reports stated their seed and DDP's index: read as unknown.
    assert old.seed is None and all(p.ddp_index is None for p in old.params)
    written = json.loads((DATA / "seed-eager-backward-v1.json").read_text())
    assert _without_added(written) == _without_added(old.to_dict())


def _without_added(data: dict[str, Any]) -> dict[str, Any]:
    """A report's dict without the fields added since the test files were written."""
    params = ("params", "unused", "dead")
    added = ("seed", "defaults", "target", "assumptions", *params)
    kept = {k: v for k, v in data.items() if k not in added}
    for key in params:
        kept[key] = [
            {k: v for k, v in p.items() if k not in ("ddp_index", "rests_on_assumption")}
            for p in data[key]
        ]
    kept["summary"] = {k: v for k, v in data["summary"].items() if k != "params_on_assumption"}
    return kept


CORRUPTIONS = [
    (
        lambda d: d["modules"][3].update(index="4"),
        "modules[3].index must be an integer, not a string",
    ),
    (
        lambda d: d["modules"][1].update(call=True),
        "modules[1].call must be an integer, not true or false",
    ),
    (
        lambda d: d["modules"][0]["uses"][1].update(params="w"),
        "modules[0].uses[1].params must be a list",
    ),
    (
        lambda d: d["modules"][0]["uses"][0]["params"].append(3),
        "modules[0].uses[0].params[2] must be a string",
    ),
    (lambda d: d.update(params={}), "params must be a list, not an object"),
    (
        lambda d: d["params"][0].update(shape=[6, 6.5]),
        "params[0].shape[1] must be an integer, not a number",
    ),
    (
        lambda d: d["params"][0].update(requires_grad="yes"),
        "params[0].requires_grad must be true or false",
    ),
    (lambda d: d["unused"][0].pop("name"), "unused[0].name is missing"),
    (lambda d: d["summary"].update(calls=None), "summary.calls must be an integer, not null"),
    (lambda d: d.update(mode="jit"), "mode must be 'fx' or 'eager', not 'jit'"),
    (lambda d: d.update(backward=[1]), "backward[0] must be a string"),
    (lambda d: d.update(inputs={"x": 3}), "inputs.x must be a string"),
    (lambda d: d.update(seed="0"), "seed must be an integer or null, not a string"),
    (lambda d: d["external"].append([]), "external[0] must be an object, not a list"),
]


@pytest.mark.parametrize(("corrupt", "message"), CORRUPTIONS, ids=[m for _, m in CORRUPTIONS])
def test_a_corrupted_report_is_refused_naming_the_field(corrupt: Any, message: str) -> None:
    data = json.loads(
        json.dumps(execorder.trace(Model(), concrete_args={"run_all_layers": True}).to_dict())
    )
    corrupt(data)
    with pytest.raises(SchemaError) as raised:
        Report.from_dict(data)
    assert message in str(raised.value)


def test_a_corrupted_file_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from execorder.cli import app

    data = execorder.trace(Model(), concrete_args={"run_all_layers": True}).to_dict()
    data["modules"][2]["depth"] = "deep"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["diff", str(broken), str(broken)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"execorder: error: {broken}: modules[2].depth must be an integer, not a string\n"
    )
