"""Eager mode on the command line: modes, inputs, devices, backward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from execorder.cli import app
from execorder.errors import InputsError, InputSpecError
from execorder.loading.inputs import InputSpec, call_inputs_factory, make_input, parse_input

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SEED = f"{SAMPLES}/seed.py:Model"
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_eager_seed_json_with_backward() -> None:
    result = invoke("trace", SEED, "--mode", "eager", "--input", "x=float32[2,6]",
                    "-c", "run_all_layers=true", "--backward", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "eager"
    assert data["inputs"] == {"x": "float32[2, 6]"}
    assert data["concrete_args"] == {"run_all_layers": True}
    assert sorted(data["backward"]) == ["layer0.bias", "layer0.weight"]
    assert [p["name"] for p in data["unused"]] == ["weight_unused"]
    assert data["summary"]["params_no_grad"] == 6


def test_auto_runs_eagerly_on_the_inputs_and_notes_the_rerun_on_cpu() -> None:
    result = invoke("trace", "models:ParamDependent", "--input", "x=float32[2,4]", "-f", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("\n") == 1 and "reran it on CPU" in result.stderr
    assert json.loads(result.stdout)["mode"] == "eager"


def test_auto_without_inputs_says_how_to_run_eagerly() -> None:
    result = invoke("trace", "models:DataDependent")
    assert result.exit_code == 2
    assert result.stderr.rstrip().endswith("--mode eager --input x=DTYPE[D0,...]")


def test_auto_uses_the_inputs_given_even_where_fx_could_trace() -> None:
    """A trainable teacher run under no_grad: only a run on the inputs sees it dead."""
    result = invoke("trace", "models:Distill", "--input", "x=float32[2,16]", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "eager" and data["inputs"] == {"x": "float32[2, 16]"}
    assert {p["name"] for p in data["dead"]} == {"teacher.weight", "teacher.bias"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "x=float32[2,6]", "--input", "nosuch=float32[2]", "-c", "run_all_layers=1"],
         "Model.forward has no argument 'nosuch'"),
        (["--input", "[2,6]", "--input", "[2]", "--input", "[1]"], "takes 2 positional"),
        (["--input", "[2,6]", "--input", "x=float32[2,6]", "-c", "run_all_layers=1"],
         "got x both by position and by name"),
        (["--input", "x=float32[2,6]"],
         "needs run_all_layers: give a value with --concrete run_all_layers=VALUE"),
    ],
)  # fmt: skip
def test_inputs_are_checked_against_forward_before_it_runs(args: list[str], message: str) -> None:
    result = invoke("trace", SEED, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "meta device" not in result.stderr  # a wrong call is not a need for values


def test_lazy_modules_need_a_real_forward() -> None:
    result = invoke("trace", "models:Lazy")
    assert result.exit_code == 2
    assert "lazy modules" in result.stderr and "--mode eager --input" in result.stderr
    result = invoke("trace", "models:Lazy", "--input", "x=float32[2,3]", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "eager"
    assert [(p["name"], p["shape"]) for p in data["params"]][:2] == [
        ("a.weight", [4, 3]),
        ("a.bias", [4]),
    ]


def test_explicit_meta_device_does_not_fall_back() -> None:
    result = invoke("trace", "models:ParamDependent", "--mode", "eager", "--input",
                    "x=float32[2,4]", "--device", "meta")  # fmt: skip
    assert result.exit_code == 2
    assert "use --device cpu" in result.stderr


def test_inputs_factory(tmp_path: Path) -> None:
    (tmp_path / "make_inputs_for_test.py").write_text(
        "import torch\n"
        "def seed_inputs(device):\n"
        "    return (torch.randn(2, 6, device=device),), {'run_all_layers': False}\n"
    )
    factory = f"{tmp_path}/make_inputs_for_test.py:seed_inputs"
    result = invoke("trace", SEED, "--mode", "eager", "--inputs", factory, "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inputs"] == {"arg0": "float32[2, 6]"}
    assert {p["name"] for p in data["unused"]} == {"weight2", "weight_unused", "layer1.weight"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "eager"], "give its inputs with --input"),
        (["--mode", "fx", "--input", "x=float32[2,6]"], "apply to --mode eager"),
        (["--mode", "fx", "--backward"], "--backward needs --mode eager"),
        (["--mode", "eager", "--input", "x=float32[2,6"], "cannot read"),
        (["--mode", "eager", "--input", "x=complex[2]"], "unknown dtype 'complex'"),
        (["--mode", "eager", "--input", "y=float32[2,6]"], "has no argument 'y'"),
        (["--mode", "eager", "--inputs", "models:not_a_module"], "not a function"),
        (
            ["--inputs", "models:no_such_factory"],
            "--inputs models:no_such_factory cannot be loaded",
        ),
        (["--inputs", "nowhere/f.py:make"], "--inputs nowhere/f.py:make cannot be loaded: no such"),
        (["--inputs", "models:raising_inputs"], "--inputs models:raising_inputs failed: KeyError"),
        (
            ["--inputs", "models:text_inputs"],
            "--inputs models:text_inputs gave a str; give a tuple",
        ),
    ],
)
def test_eager_option_errors(args: list[str], message: str) -> None:
    result = invoke("trace", SEED, "-c", "run_all_layers=1", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_ddp_indices_in_eager_mode() -> None:
    result = invoke("ddp-indices", "models:DataDependent", "0 1", "--input", "x=float32[2,4]",
                    "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in json.loads(result.stdout)["indices"]] == ["lin.weight", "lin.bias"]


def test_sweep_in_eager_mode() -> None:
    result = invoke("trace", SEED, "--mode", "eager", "--input", "x=float32[2,6]",
                    "--sweep", "run_all_layers=true,false", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    status = {p["name"]: p["status"] for p in json.loads(result.stdout)["params"]}
    assert status["weight2"] == "some" and status["weight_unused"] == "never"


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("x=float32[2,6]", InputSpec("x", "float32", (2, 6))),
        ("input_ids=int64[1, 32]@0:32000", InputSpec("input_ids", "int64", (1, 32), 0, 32000)),
        ("mask=bool[4]@0:2", InputSpec("mask", "bool", (4,), 0, 2)),
        ("t=float16[]", InputSpec("t", "float16", ())),
        ("u=bfloat16[3]@-1.5:1.5", InputSpec("u", "bfloat16", (3,), -1.5, 1.5)),
    ],
)
def test_parse_input(text: str, spec: InputSpec) -> None:
    assert parse_input(text) == spec


@pytest.mark.parametrize(
    "text", ["x", "x=float32", "x=float32(2)", "1x=float32[2]", "x=int64[2]@5:5"]
)
def test_parse_input_rejects(text: str) -> None:
    with pytest.raises(InputSpecError):
        parse_input(text)


def test_make_input_values() -> None:
    assert make_input(parse_input("x=int64[3]"), "cpu").tolist() == [0, 0, 0]
    ids = make_input(parse_input("x=int64[1000]@5:9"), "cpu")
    assert ids.dtype == torch.int64 and ids.min() >= 5 and ids.max() <= 8
    floats = make_input(parse_input("x=float32[1000]@2:3"), "cpu")
    assert floats.min() >= 2 and floats.max() < 3
    meta = make_input(parse_input("x=bfloat16[2,3]"), "meta")
    assert meta.is_meta and meta.dtype == torch.bfloat16 and meta.shape == (2, 3)


def test_inputs_factory_shapes() -> None:
    x = torch.ones(2)
    assert call_inputs_factory(lambda: x, "f", "cpu")[0][0] is x
    assert call_inputs_factory(lambda: {"a": x}, "f", "cpu") == ((), {"a": x})
    args, kwargs = call_inputs_factory(lambda device: ((x,), {"flag": True}), "f", "meta")
    assert args[0].is_meta and kwargs == {"flag": True}
    with pytest.raises(InputsError, match="gave a int"):
        call_inputs_factory(lambda: 3, "f", "cpu")
    with pytest.raises(InputsError, match="failed: ValueError: nope"):
        call_inputs_factory(lambda: (_ for _ in ()).throw(ValueError("nope")), "f", "cpu")


def test_answers_are_the_same_on_every_run_and_state_their_seed() -> None:
    """Top-1 routing on random weights and inputs: seeded by default, so CI can rely on it."""
    args = ["trace", f"{SAMPLES}/moe.py:MoE", "--input", "x=float32[4,16]", "-f", "json",
            "--device", "cpu"]  # fmt: skip
    runs = [json.loads(invoke(*args).stdout) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2] and runs[0]["seed"] == 0
    others = {
        tuple(p["name"] for p in json.loads(invoke(*args, "--seed", str(s)).stdout)["unused"])
        for s in range(1, 6)
    }
    assert len(others) > 1  # the seed is what decides the routing
