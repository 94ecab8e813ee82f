"""Forward's inputs for a real (eager) run: sizes, real values, or a function making them.

An input size is written as torchinfo's ``input_size`` is given, with a dtype
and a value range when they matter: ``(2, 6)`` or ``"[2,6]"`` (float32),
``"int64[1,32]@0:32000"``, and on the command line ``--input x=float32[2,6]``
(a name makes it a keyword argument; without one it is positional).
Floating inputs are random normal (uniform in ``[LOW, HIGH)`` with a range);
integer and bool inputs are zeros unless a range is given, then uniform
integers in ``[LOW, HIGH)``. On the meta device only the shape and dtype exist.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from execorder.errors import (
    InputsError,
    InputSpecError,
    UserExitError,
    first_line,
    user_code,
)
from execorder.spelling import size_text

_SPEC = re.compile(
    r"^(?:torch\.)?(?P<dtype>[a-z][a-z0-9]*)?\[(?P<shape>[\d,]*)\]"
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
SYNTAX = "[NAME=][DTYPE][D0,D1,...][@LOW:HIGH]"
EXAMPLE = "e.g. input_ids=int64[1,32]@0:32000 or float32[2,6]"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input tensor, by its size: a keyword argument of forward when named.

    Attributes:
        name: The forward argument, or None for the next positional one.
        dtype: A torch dtype's name (``"float32"``).
        shape: The tensor's shape.
        low: With ``high``, the range values are drawn from.
        high: The range's (exclusive) end.
    """

    name: str | None
    dtype: str
    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None

    def __str__(self) -> str:
        shape = ", ".join(str(d) for d in self.shape)
        span = "" if self.low is None else f"@{self.low:g}:{self.high:g}"
        named = f"{self.name}=" if self.name else ""
        return f"{named}{self.dtype}[{shape}]{span}"


def parse_input(text: str) -> InputSpec:
    """Read ``[NAME=][DTYPE][D0,D1,...][@LOW:HIGH]``; the dtype defaults to float32.

    Raises:
        InputSpecError: Saying what is wrong, with the syntax and an example.
    """
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep:
        name, spec = "", text
    elif not name.isidentifier():
        raise InputSpecError(text, f"{name!r} is not an argument name; expected {SYNTAX}")
    match = _SPEC.match(spec.replace(" ", ""))
    if match is None:
        raise InputSpecError(text, f"cannot read it; expected {SYNTAX}, {EXAMPLE}")
    dtype = match["dtype"] or "float32"
    if dtype not in DTYPES:
        raise InputSpecError(text, f"unknown dtype {dtype!r}; choose from: {', '.join(DTYPES)}")
    shape = tuple(int(d) for d in match["shape"].split(",") if d)
    low = None if match["low"] is None else float(match["low"])
    high = None if match["high"] is None else float(match["high"])
    if low is not None and high is not None and high <= low:
        raise InputSpecError(text, f"empty range @{low:g}:{high:g}")
    return InputSpec(name or None, dtype, shape, low, high)


def input_spec(value: Any, name: str | None = None) -> InputSpec:
    """An :class:`InputSpec` from a shape (``(2, 6)``, ``torch.Size``) or its text.

    Raises:
        InputSpecError: If ``value`` is neither.
    """
    if isinstance(value, InputSpec):
        return value if name is None else replace(value, name=name)
    if isinstance(value, str):
        return parse_input(value if name is None else f"{name}={value}")
    if _is_shape(value):
        return InputSpec(name, "float32", tuple(int(d) for d in value))
    raise InputSpecError(
        repr(value), f"not a shape nor an input size; expected a tuple of ints or {SYNTAX}"
    )


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ) or type(value).__name__ == "Size"


def input_specs(input_size: Any) -> tuple[InputSpec, ...]:
    """Every input size in ``input_size``, however it is written.

    A shape or a text is one input; a dict gives named ones; a list or tuple
    of shapes or texts gives several, in order; an empty one gives none (a
    scalar input is ``"float32[]"``).

    Raises:
        InputSpecError: If an entry cannot be read.
    """
    if input_size is None or (isinstance(input_size, (list, tuple, dict)) and not input_size):
        return ()
    if isinstance(input_size, (str, InputSpec)) or _is_shape(input_size):
        return (input_spec(input_size),)
    if isinstance(input_size, Mapping):
        return tuple(input_spec(v, str(k)) for k, v in input_size.items())
    if isinstance(input_size, Sequence):
        return tuple(input_spec(v) for v in input_size)
    return (input_spec(input_size),)


def make_input(spec: InputSpec, device: Any) -> Any:
    """The tensor an :class:`InputSpec` describes, on ``device``.

    Raises:
        InputSpecError: If it cannot fit in the memory there is (nothing is allocated).
    """
    import torch

    from execorder.loading.memory import available_bytes

    dtype = getattr(torch, spec.dtype)
    kind = torch.device(device).type
    if kind == "meta":
        return torch.empty(spec.shape, dtype=dtype, device=device)
    needed = math.prod(spec.shape) * torch.empty((), dtype=dtype).element_size()
    available = available_bytes("cuda" if kind == "cuda" else "cpu")
    if available is not None and needed > available:
        raise InputSpecError(
            str(spec),
            f"needs {size_text(needed)} on {kind}, and about {size_text(available)} is "
            "available; a smaller size, or the meta device, would do",
        )
    try:
        return _filled(spec, dtype, device)
    except (RuntimeError, MemoryError) as exc:
        raise InputSpecError(str(spec), f"cannot be made on {kind}: {first_line(exc)}") from exc


def _filled(spec: InputSpec, dtype: Any, device: Any) -> Any:
    import torch

    if spec.low is None or spec.high is None:
        if dtype.is_floating_point:
            return torch.randn(spec.shape, dtype=dtype, device=device)
        return torch.zeros(spec.shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        uniform = torch.rand(spec.shape, device=device) * (spec.high - spec.low) + spec.low
        return uniform.to(dtype)
    return torch.randint(int(spec.low), int(spec.high), spec.shape, device=device).to(dtype)


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


Arguments = tuple[tuple[Any, ...], dict[str, Any]]


def split_arguments(value: Any, name: str) -> Arguments:
    """Forward's arguments from a tensor, a tuple, a dict, or ``(tuple, dict)``.

    Raises:
        InputsError: For anything else.
    """
    import torch

    if isinstance(value, torch.Tensor):
        return (value,), {}
    if isinstance(value, Mapping):
        return (), dict(value)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], Mapping)
        and isinstance(value[0], (tuple, list))
    ):
        return tuple(value[0]), dict(value[1])
    if isinstance(value, (tuple, list)):
        return tuple(value), {}
    raise InputsError(
        name,
        f"gave a {type(value).__name__}; give a tuple of positional arguments, a dict of "
        "keyword arguments, or (tuple, dict)",
    )


def call_inputs_factory(
    factory: Any, name: str, device: Any, keywords: Mapping[str, Any] | None = None
) -> Arguments:
    """Call a function making forward's arguments; it may take a ``device`` keyword.

    It returns positional args (a tuple or a single tensor), keyword args (a
    dict), or both as ``(args, kwargs)``; tensors are moved to ``device``.

    Args:
        factory: The function.
        name: What to call it in messages.
        device: Where the inputs go.
        keywords: More keywords it may take (``rank`` and ``world_size`` on
            each rank of ``execorder ranks``); each is passed if it takes it.

    Raises:
        InputsError: If it is not callable, raises, or returns something else.
    """
    if not callable(factory):
        raise InputsError(name, f"is a {type(factory).__name__}, not a function")
    offered = {"device": device, **(keywords or {})}
    try:
        taken = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        taken = {}  # type: ignore[assignment]
    given = {k: v for k, v in offered.items() if k in taken}
    try:
        with user_code(f"making the inputs with {name}"):
            value = factory(**given)
    except UserExitError:
        raise
    except Exception as exc:
        raise InputsError(name, f"failed: {first_line(exc)}") from exc
    args, kwargs = split_arguments(value, name)
    return to_device(args, device), to_device(kwargs, device)


class Inputs:
    """Forward's inputs, however the caller gave them, made on any device.

    Args:
        values: Real arguments (a tensor, a tuple, a dict, or ``(tuple,
            dict)``), or a function returning them that may take a
            ``device`` keyword.
        sizes: Input sizes (see :func:`input_specs`); positional ones follow
            the positional ``values``.
        name: What to call ``values`` in messages (the function's target).
        keywords: More keywords the function may take, passed when it does
            (``rank`` and ``world_size`` on each rank of a job).

    Raises:
        InputSpecError: If a size cannot be read.
        InputsError: If ``values`` is not one of the forms above.
    """

    def __init__(
        self,
        values: Any = None,
        sizes: Any = None,
        *,
        name: str | None = None,
        keywords: Mapping[str, Any] | None = None,
    ) -> None:
        self.specs = input_specs(sizes)
        self.keywords = dict(keywords or {})
        self._values = values
        self._name = name or str(getattr(values, "__name__", "inputs"))
        if values is not None and not callable(values):
            split_arguments(values, self._name)  # fail early on a wrong form

    def __bool__(self) -> bool:
        return self._values is not None or bool(self.specs)

    def bytes(self) -> int:
        """Bytes the input sizes take once made (what a function would make is unknown)."""
        import torch

        return sum(
            math.prod(s.shape) * torch.empty((), dtype=getattr(torch, s.dtype)).element_size()
            for s in self.specs
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The keyword arguments known before making them (named sizes, dict values)."""
        named = [s.name for s in self.specs if s.name]
        if isinstance(self._values, Mapping):
            named += [str(k) for k in self._values]
        return tuple(named)

    def make(self, device: Any) -> Arguments:
        """Forward's ``(args, kwargs)`` on ``device``: sizes made anew, values moved there."""
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if callable(self._values):
            args, kwargs = call_inputs_factory(self._values, self._name, device, self.keywords)
        elif self._values is not None:
            args, kwargs = split_arguments(self._values, self._name)
            args, kwargs = to_device(args, device), to_device(kwargs, device)
        made = [(spec.name, make_input(spec, device)) for spec in self.specs]
        args += tuple(tensor for name, tensor in made if name is None)
        kwargs.update((name, tensor) for name, tensor in made if name is not None)
        return args, kwargs
