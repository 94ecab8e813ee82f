"""Inputs for eager mode: ``--input NAME=DTYPE[D0,D1,...][@LOW:HIGH]`` and factories.

Floating inputs are random normal (uniform in ``[LOW, HIGH)`` with a range);
integer and bool inputs are zeros unless a range is given, then uniform
integers in ``[LOW, HIGH)``. On the meta device only the shape and dtype exist.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from execorder.errors import ArgumentSyntaxError, TargetError

_SPEC = re.compile(
    r"^(?P<dtype>[a-z][a-z0-9]*)\[(?P<shape>[\d,\s]*)\]"
    r"(?:@(?P<low>-?\d+(?:\.\d+)?):(?P<high>-?\d+(?:\.\d+)?))?$"
)
DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "float",
    "half",
    "double",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "long",
    "int",
    "short",
    "bool",
)
_EXAMPLE = "e.g. input_ids=int64[1,32]@0:32000 or x=float32[2,6]"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One ``--input``: a tensor argument of forward, by name."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None

    def __str__(self) -> str:
        shape = ", ".join(str(d) for d in self.shape)
        span = "" if self.low is None else f"@{self.low:g}:{self.high:g}"
        return f"{self.dtype}[{shape}]{span}"


def parse_input(text: str) -> InputSpec:
    """Parse ``NAME=DTYPE[D0,D1,...]`` with an optional ``@LOW:HIGH`` value range.

    Raises:
        ArgumentSyntaxError: With the expected syntax and an example.
    """
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ArgumentSyntaxError(
            f"--input expects NAME=DTYPE[D0,D1,...], {_EXAMPLE}; got {text!r}"
        )
    match = _SPEC.match(spec.replace(" ", ""))
    if match is None:
        raise ArgumentSyntaxError(f"--input {name}: cannot read {spec!r}; {_EXAMPLE}")
    dtype = match["dtype"]
    if dtype not in DTYPES:
        raise ArgumentSyntaxError(
            f"--input {name}: unknown dtype {dtype!r}; choose from: {', '.join(DTYPES)}"
        )
    shape = tuple(int(d) for d in match["shape"].split(",") if d)
    low = None if match["low"] is None else float(match["low"])
    high = None if match["high"] is None else float(match["high"])
    if low is not None and high is not None and high <= low:
        raise ArgumentSyntaxError(f"--input {name}: empty range @{low:g}:{high:g}")
    return InputSpec(name, dtype, shape, low, high)


def make_input(spec: InputSpec, device: Any) -> Any:
    """The tensor an :class:`InputSpec` describes, on ``device``."""
    import torch

    dtype = getattr(torch, spec.dtype)
    if torch.device(device).type == "meta":
        return torch.empty(spec.shape, dtype=dtype, device=device)
    if spec.low is None or spec.high is None:
        if dtype.is_floating_point:
            return torch.randn(spec.shape, dtype=dtype, device=device)
        return torch.zeros(spec.shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        uniform = torch.rand(spec.shape, device=device) * (spec.high - spec.low) + spec.low
        return uniform.to(dtype)
    return torch.randint(int(spec.low), int(spec.high), spec.shape, device=device).to(dtype)


def describe(tensor: Any) -> str:
    """``dtype[shape]`` of a tensor, as in ``--input``."""
    return f"{str(tensor.dtype).removeprefix('torch.')}[{', '.join(str(d) for d in tensor.shape)}]"


def to_device(value: Any, device: Any) -> Any:
    """A copy of nested tuples/lists/dicts with every tensor moved to ``device``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def call_inputs_factory(
    factory: Any, name: str, device: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Call an ``--inputs`` factory; it may take a ``device`` keyword.

    It returns positional args (a tuple or a single tensor), keyword args (a
    dict), or both as ``(args, kwargs)``.

    Raises:
        TargetError: If it is not callable, raises, or returns something else.
    """
    import torch

    if not callable(factory):
        raise TargetError(f"--inputs {name} is a {type(factory).__name__}, not a function")
    try:
        accepts_device = "device" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_device = False
    try:
        value = factory(device=device) if accepts_device else factory()
    except Exception as exc:
        raise TargetError(f"--inputs {name}() failed: {type(exc).__name__}: {exc}") from exc
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    if isinstance(value, torch.Tensor):
        args, kwargs = (value,), {}
    elif isinstance(value, Mapping):
        args, kwargs = (), dict(value)
    elif (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], Mapping)
        and isinstance(value[0], (tuple, list))
    ):
        args, kwargs = tuple(value[0]), dict(value[1])
    elif isinstance(value, (tuple, list)):
        args, kwargs = tuple(value), {}
    else:
        raise TargetError(
            f"--inputs {name}() returned a {type(value).__name__}; return a tuple of "
            "positional arguments, a dict of keyword arguments, or (tuple, dict)"
        )
    return to_device(args, device), to_device(kwargs, device)
