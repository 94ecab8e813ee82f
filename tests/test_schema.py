"""Every JSON document execorder emits validates against its shipped JSON Schema."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import jsonschema
import models
import pytest
from cases import CASES, predict
from seed import Model
from typer.testing import CliRunner

import execorder
from execorder.analysis import diff_reports, explain_indices, sweep
from execorder.cli import app

SCHEMA = json.loads(files("execorder.report").joinpath("schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _validate(data: dict[str, Any], kind: str) -> None:
    VALIDATOR.validate(data)
    sub = {"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{kind}"}
    jsonschema.Draft202012Validator(sub).validate(data)


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_report_validates(case: Any) -> None:
    report = predict(case)
    _validate(json.loads(json.dumps(report.to_dict())), "report")


def test_diffs_sweeps_and_ddp_explanations_validate() -> None:
    a = execorder.trace(Model(), concrete_args={"run_all_layers": True})
    b = execorder.trace(Model(), concrete_args={"run_all_layers": False})
    for old, new in ((a, b), (b, a), (a, a)):
        _validate(json.loads(json.dumps(diff_reports(old, new).to_dict())), "diff")
    moved = diff_reports(
        execorder.trace(models.Ordered(), concrete_args={"swap": False}),
        execorder.trace(models.Ordered(), concrete_args={"swap": True}),
    )
    _validate(json.loads(json.dumps(moved.to_dict())), "diff")
    model = Model()
    result = sweep(
        lambda args: execorder.trace(model, concrete_args=args),
        axes=[("run_all_layers", [True, False])],
        target="seed",
    )
    _validate(json.loads(json.dumps(result.to_dict())), "sweep")
    _validate(json.loads(json.dumps(explain_indices(a, (0, 1, 3)).to_dict())), "ddp_indices")


def test_every_kind_of_parameter_change_is_in_the_schema() -> None:
    from execorder.analysis import ChangeKind

    listed = SCHEMA["$defs"]["param_change"]["properties"]["what"]["enum"]
    assert listed == [kind.value for kind in ChangeKind]


def test_the_schema_rejects_what_it_should() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True}).to_dict()
    for broken in (
        {**report, "schema_version": 2},
        {**report, "surprise": 1},
        {k: v for k, v in report.items() if k != "dead"},
        {**report, "unused": [{**report["unused"][0], "dead": True}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(broken)


def test_schema_command_prints_the_shipped_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == SCHEMA


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("name", ["seed-all-layers", "frozen", "attention", "returned"])
def test_eager_reports_validate(name: str, backward: bool) -> None:
    from execorder import eager

    case = CASES[name]
    report = eager.trace(
        case.build(), args=case.inputs(), kwargs=case.concrete_args, backward=backward
    )
    data = json.loads(json.dumps(report.to_dict()))
    _validate(data, "report")
    assert (data["backward"] is None) is not backward


def test_fsdp_plans_validate() -> None:
    import execorder.fsdp

    plans = [
        execorder.fsdp.plan(models.SkipsLayer, input_size=(2, 4), sweep=[("deep", [True, False])]),
        execorder.fsdp.plan(models.SkipsLayer, input_size=(2, 4), concrete_args={"deep": False}),
        execorder.fsdp.plan(models.ReadsAnotherUnit, input_size=(2, 4), backward=True),
        execorder.fsdp.plan(Model, concrete_args={"run_all_layers": True}),
        execorder.fsdp.plan(
            models.UnitTwice,
            input_size=(2, 4),
            units=["layers.0+layers.1"],
            world_size=4,
            param_dtype="bfloat16",
            reduce_dtype="float32",
        ),
    ]
    for plan in plans:
        _validate(json.loads(json.dumps(plan.to_dict())), "fsdp_plan")
    broken = plans[0].to_dict()
    broken["checks"][0]["severity"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)


def test_rank_comparisons_validate() -> None:
    from execorder.analysis.ranks import RankRecord, compare_records

    a = RankRecord(("", "l0", "l1"), {"l1.w": "used"}, ("l1.w",))
    b = RankRecord(("", "l0"), {"l1.w": "unused"}, ())
    for groups in (
        [((0, 1), a)],
        [((0,), a), ((1,), b)],
        [((0,), a), ((1,), RankRecord(error="failed"))],
    ):
        result = compare_records(groups, world_size=2, target="m")
        _validate(json.loads(json.dumps(result.to_dict())), "ranks")


def test_timed_reports_validate() -> None:
    import torch

    model = models.Frozen()
    report = execorder.profile(model, inputs=torch.randn(2, 4), timing=True).report
    assert report.timing is not None
    _validate(json.loads(json.dumps(report.to_dict())), "report")


def test_a_draw_of_the_models_own_generator_validates_and_reads_back() -> None:
    from execorder.report import AssumptionKind, Report

    report = execorder.profile(models.HelperRandomLayerDrop, input_size=(2, 4)).report
    data = json.loads(json.dumps(report.to_dict()))
    _validate(data, "report")
    assert [a["own_generator"] for a in data["assumptions"]] == [True]
    again = Report.from_dict(data)
    assert again == report and again.assumed(AssumptionKind.DRAWN)[0].own_generator


@pytest.mark.transformers
def test_reports_and_plans_with_inputs_made_validate() -> None:
    import execorder.fsdp

    hf = pytest.importorskip("hf")
    report = execorder.profile(hf.tiny_bert).report
    assert report.inputs_made
    _validate(json.loads(json.dumps(report.to_dict())), "report")
    plan = execorder.fsdp.plan(hf.tiny_bert)
    _validate(json.loads(json.dumps(plan.to_dict())), "fsdp_plan")
    broken = report.to_dict()
    broken["inputs_made"] = {"input_ids": "guessed"}
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)


def test_reports_with_memory_validate() -> None:
    from encdec import EncoderDecoder

    report = execorder.profile(EncoderDecoder, input_size="int64[2,8]@0:100", memory="sgd").report
    _validate(json.loads(json.dumps(report.to_dict())), "report")
    broken = report.to_dict()
    broken["memory"]["peak_at"]["phase"] = "warmup"
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)


def test_diffs_of_measured_steps_validate() -> None:
    from encdec import EncoderDecoder

    def measured(size: str, memory: str = "sgd") -> execorder.Report:
        return execorder.profile(EncoderDecoder, input_size=size, memory=memory).report

    diff = diff_reports(measured("int64[2,8]@0:100"), measured("int64[4,8]@0:100", "adamw"))
    assert diff.memory is not None and diff.notes
    _validate(json.loads(json.dumps(diff.to_dict())), "diff")
    broken = diff.to_dict()
    broken["memory"]["new"]["peak_at"]["unit"] = None  # a plan's field, not a diff's
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)


@pytest.mark.slow
def test_plans_with_memory_validate() -> None:
    import execorder.fsdp

    profiler = execorder.Profiler(models.MlpBlocks, input_size="float32[8,256]")
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2)
    plan = execorder.fsdp.plan_memory(profiler, plan, report, budget=1 << 20)
    _validate(json.loads(json.dumps(plan.to_dict())), "fsdp_plan")


def test_a_plan_with_parameters_sharded_on_dim_1_validates_and_reads_back() -> None:
    """torchtitan's layout on more ranks than DeepSeek-V3's debug model has experts."""
    pytest.importorskip("torchtitan", reason="torchtitan is not installed (requirements-dev.txt)")
    import execorder.fsdp
    from execorder.analysis.sharding import FsdpPlan

    plan = execorder.fsdp.plan(
        "torchtitan.models.deepseek_v3:model_registry",
        init_kwargs={"flavor": "debugmodel"},
        input_size="tokens=int64[1,64]@0:1000",
        layout="torchtitan",
        world_size=16,
    )
    data = json.loads(json.dumps(plan.to_dict()))
    _validate(data, "fsdp_plan")
    assert data["shard_dims"] and set(data["shard_dims"].values()) == {1}
    assert FsdpPlan.from_dict(data).to_dict() == data
