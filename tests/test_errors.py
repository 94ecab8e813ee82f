"""Errors keep their facts as fields and speak the caller's language: Python, or flags."""

from __future__ import annotations

import pickle

import pytest

from execorder.cli.words import CLI, message
from execorder.errors import (
    Arg,
    BuildError,
    ControlFlowError,
    DeviceError,
    ExecOrderError,
    IndicesError,
    InitArgsError,
    InputsError,
    InputSpecError,
    InstanceDeviceError,
    InstanceInitError,
    IterationError,
    MetaDeviceError,
    ModeError,
    NeedsInputsError,
    ReportVersionError,
    SweepAxisError,
    SweepFailure,
)

SPOKEN = [
    pytest.param(
        ControlFlowError("Net.forward", ["flag"], direct=True),
        "pin it with concrete_args={'flag': ...}",
        "pin it with --concrete flag=VALUE",
        id="control-flow",
    ),
    pytest.param(
        ControlFlowError("Net.forward", ["x"], direct=False),
        "if it is a flag or option, pin it with concrete_args={'x': ...}",
        "pin it with --concrete x=VALUE",
        id="control-flow-on-a-value",
    ),
    pytest.param(
        ControlFlowError("Net.forward", ["a", "b"], direct=False),
        "pin the flags among them with concrete_args={'NAME': ...}",
        "pin the flags among them with --concrete NAME=VALUE",
        id="control-flow-on-two",
    ),
    pytest.param(
        IterationError("Net.forward", "size"),
        "pin the argument with concrete_args if it is not a tensor",
        "pin the argument with --concrete if it is not a tensor",
        id="iteration",
    ),
    pytest.param(
        NeedsInputsError(ControlFlowError("Net.forward", ["flag"], direct=True)),
        "Or run forward for real: mode='eager', input_size",
        "Or run forward for real: --mode eager --input NAME=DTYPE[D0,...]",
        id="needs-inputs",
    ),
    pytest.param(
        NeedsInputsError(ControlFlowError("Net.forward", ["x"], direct=False)),
        "Or run forward for real: mode='eager', input_size={'x': ...}",
        "Or run forward for real: --mode eager --input x=DTYPE[D0,...]",
        id="needs-inputs-for-a-tensor",
    ),
    pytest.param(
        InitArgsError("Net()", missing=["width", "depth"]),
        "pass init_kwargs={'width': ..., 'depth': ...}",
        "pass --init width=VALUE --init depth=VALUE",
        id="init-missing",
    ),
    pytest.param(
        InstanceInitError("net"),
        "so init_kwargs does not apply; point target at its class",
        "so --init does not apply; point TARGET at its class",
        id="instance-init",
    ),
    pytest.param(
        InstanceDeviceError("net", "cpu", "cuda"),
        "device='cuda' does not apply",
        "--device cuda does not apply",
        id="instance-device",
    ),
    pytest.param(
        BuildError("Net()", "meta", "RuntimeError: no", where="net.py:3", chosen=True),
        "building Net() on meta failed (net.py:3): RuntimeError: no; try device='cpu'",
        "building Net() on meta failed (net.py:3): RuntimeError: no; try --device cpu",
        id="build",
    ),
    pytest.param(
        DeviceError("cuda", ("meta", "cpu", "cuda"), unavailable=True),
        "device='cuda' was asked for but CUDA is not available here",
        "--device cuda was asked for but CUDA is not available here",
        id="no-cuda",
    ),
    pytest.param(
        MetaDeviceError("Net.forward", "NotImplementedError: nonzero"),
        "needs real tensor values (data-dependent control flow or indexing); use device='cpu'",
        "needs real tensor values (data-dependent control flow or indexing); use --device cpu",
        id="meta",
    ),
    pytest.param(
        ModeError(Arg.BACKWARD, "fx"),
        "backward=True needs mode='eager' (or auto)",
        "--backward needs --mode eager (or auto)",
        id="mode-backward",
    ),
    pytest.param(
        ModeError(None, "eager"),
        "give its inputs with input_size or inputs",
        "give its inputs with --input NAME=DTYPE[D0,...] or --inputs MODULE:FUNCTION",
        id="mode-inputs",
    ),
    pytest.param(
        ModeError(None, "eager", needs=Arg.MEMORY),
        "memory runs forward for real: give its inputs with input_size or inputs",
        "--memory runs forward for real: give its inputs with --input NAME=DTYPE[D0,...] or "
        "--inputs MODULE:FUNCTION",
        id="mode-inputs-memory",
    ),
    pytest.param(
        InputSpecError("x=float32[2", "cannot read it"),
        "input_size='x=float32[2': cannot read it",
        "--input x=float32[2: cannot read it",
        id="input-size",
    ),
    pytest.param(
        InputsError("mod:make", "failed: ValueError: no"),
        "inputs mod:make failed: ValueError: no",
        "--inputs mod:make failed: ValueError: no",
        id="inputs",
    ),
    pytest.param(
        SweepAxisError("flag", fixed=True),
        "flag is both swept (sweep axes) and fixed (concrete_args)",
        "flag is both swept (--sweep) and fixed (--concrete)",
        id="sweep-fixed",
    ),
    pytest.param(
        SweepAxisError("flag", fixed=False),
        "sweep axis 'flag' is given more than once",
        "--sweep flag is given more than once",
        id="sweep-twice",
    ),
    pytest.param(
        SweepFailure({"flag": True}, IterationError("Net.forward", "size")),
        "with flag=True: While tracing Net.forward:",
        "pin the argument with --concrete if",
        id="sweep-failure",
    ),
    pytest.param(
        IndicesError(index=9, count=8),
        "were the same init_kwargs and concrete_args values used",
        "were the same --init and --concrete values used",
        id="ddp-index",
    ),
    pytest.param(
        ReportVersionError("old.json", 7, 1),
        "regenerate it with this version",
        "regenerate it with this version (e.g. --update-baseline)",
        id="report-version",
    ),
]


@pytest.mark.parametrize(("error", "python", "cli"), SPOKEN)
def test_each_error_speaks_python_and_flags(error: ExecOrderError, python: str, cli: str) -> None:
    assert python in str(error)
    assert "--" not in str(error)
    assert cli in message(error)
    assert "\n" not in str(error) and "\n" not in message(error)


@pytest.mark.parametrize(("error", "python", "cli"), SPOKEN)
def test_errors_cross_process_boundaries(error: ExecOrderError, python: str, cli: str) -> None:
    again = pickle.loads(pickle.dumps(error))

    def fields(e: ExecOrderError) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Exception) else v for k, v in vars(e).items()}

    assert type(again) is type(error) and fields(again) == fields(error)
    assert str(again) == str(error) and message(again) == message(error)


def test_the_facts_are_fields() -> None:
    error = ControlFlowError("Net.forward", ["flag"], direct=True)
    assert (error.owner, error.arguments, error.direct) == ("Net.forward", ("flag",), True)
    assert error.reason == "control flow depends on argument 'flag'"
    assert error.describe(CLI).startswith("While tracing Net.forward: control flow depends on")
    missing = InitArgsError("Net()", missing=["width"])
    assert missing.missing == ("width",) and missing.what == "Net()"


def test_no_error_carries_an_exit_code() -> None:
    assert not hasattr(ExecOrderError("x"), "exit_code")
