"""Choices forward makes from values it drew at random: which run is one draw of many.

LayerDrop (wav2vec2, HuBERT, WavLM, Data2Vec-Audio, SEW and UniSpeech train
with it by default; BART's and Whisper's ``encoder_layerdrop``) skips each
layer of a training forward when ``torch.rand([]) < layerdrop``. Which layers
run, and so which parameters get a gradient, is drawn anew each step: a run
that skipped none says nothing of the next, where DDP fails on the layer it
skips, and FSDP2's ranks, drawing differently, gather different units.

:func:`watching_draws` finds such choices. While forward runs, torch's random
functions (``torch.rand``, ``torch.randint``, ``Tensor.bernoulli_``, ...; not
dropout, whose noise decides no choice) mark what they return; from the first
draw on, a :class:`Draws` mode marks what is computed from a marked tensor,
and tells ``on_choice`` of each value read (``if t:``, ``.item()``,
``.tolist()``) or selection (``nonzero``, a boolean mask as an index) of one.
A forward that draws nothing pays nothing: the mode is entered at its first
draw. A draw from Python's ``random`` (transformers 4's LayerDrop drew
``random.uniform(0, 1)``) or NumPy's global generator is a plain number,
which can be followed no further: each call is taken for a choice, told where
forward calls the function as its module holds it (``random.uniform``,
``np.random.rand``), and as one choice of forward's whole call where it was
bound before the run (``from random import uniform``: only the generator's
state moves; another thread's draw meanwhile is then taken for forward's). A
generator of the model's own (a ``random.Random``, a NumPy ``Generator`` or
``RandomState``) held by one of its modules or in the globals of a module
defining their classes (:func:`generators_of`) is seen the same way, as its
state moving; one held elsewhere is not.

A router's choice is of the same kind: which experts get tokens is computed
from the router's weights, and another batch, or the weights a step later,
choose otherwise. On meta such a selection is assumed (:mod:`.meta`); a run on
a real device passes ``computed_from`` (the parameters), and the mode, then
entered at once, marks what is computed from them too (its source
:data:`COMPUTED`). ``.item()`` and ``float()`` of such a value are taken for
logging (:data:`LOGGED`); any other read of one, an ``assert`` on it too, is a
choice.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import SUPPORTED_NODES, tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

SOURCES = (
    "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm",
    "bernoulli", "multinomial", "normal", "poisson",
)  # fmt: skip
"""torch's functions that draw (dropout draws too, but decides nothing by it)."""

TENSOR_SOURCES = (
    "uniform_", "normal_", "bernoulli", "bernoulli_", "random_", "exponential_",
    "geometric_", "cauchy_", "log_normal_", "multinomial",
)  # fmt: skip
"""Tensor methods that draw."""

_READS = {
    torch.Tensor.__bool__: "Tensor.__bool__",
    torch.Tensor.item: "Tensor.item",
    torch.Tensor.tolist: "Tensor.tolist",
    torch.Tensor.__int__: "Tensor.__int__",
    torch.Tensor.__float__: "Tensor.__float__",
    torch.Tensor.__index__: "Tensor.__index__",
    torch.Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.argwhere: "argwhere",
    torch.Tensor.masked_select: "masked_select",
    torch.masked_select: "masked_select",
    torch.equal: "equal",
    torch.unique: "unique",
    torch.Tensor.unique: "unique",
    torch.unique_consecutive: "unique_consecutive",
}
"""Reads of values whose result decides what runs next (a branch, a count, a selection)."""

_INDEXING = frozenset({torch.Tensor.__getitem__, torch.Tensor.__setitem__})

PYTHON_SOURCES = (
    "random", "uniform", "randint", "randrange", "choice", "choices", "sample", "shuffle",
    "gauss", "normalvariate", "lognormvariate", "expovariate", "vonmisesvariate",
    "gammavariate", "betavariate", "paretovariate", "weibullvariate", "triangular",
    "getrandbits", "binomialvariate",
)  # fmt: skip
"""Python's ``random`` functions (those of its module-level generator)."""

NUMPY_SOURCES = (
    "rand", "randn", "random", "random_sample", "ranf", "sample", "uniform", "randint",
    "random_integers", "choice", "permutation", "shuffle", "normal", "binomial", "poisson",
    "exponential", "beta", "gamma",
)  # fmt: skip
"""NumPy's ``numpy.random`` functions (those of its global ``RandomState``)."""

PYTHON_READ = "a number"
"""How a choice reads a Python or NumPy draw: it is one already."""

MOVED = "its state moved"
"""How a choice reads a Python or NumPy draw seen only as its generator's state moving:
where forward drew is not known."""


class Draws(TorchFunctionMode):
    """Marks what is computed from drawn tensors, and tells of each choice made from one.

    Args:
        on_choice: Told ``(source, read)`` at each choice: the random
            function whose draw it reads (``torch.rand``) and how
            (``Tensor.__bool__``).
    """

    def __init__(self, on_choice: Callable[[str, str], None]) -> None:
        super().__init__()
        self.on_choice = on_choice
        self.drawn: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.entered = False

    def mark(self, value: Any, source: str) -> None:
        for tensor in _tensors(value, []):
            self.drawn[tensor] = source

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        drawn = self.drawn
        if not len(drawn):
            return out
        source = None
        for tensor in _tensors(kwargs, _tensors(args, [])):
            source = drawn.get(tensor)
            if source is not None:
                break
        if source is None:
            return out
        read = _READS.get(func)
        if read is None and func in _INDEXING and _drawn_mask(args[1:2], self.drawn):
            read = "a boolean mask as an index"
        if read is not None:
            self.on_choice(source, read)
        self.mark(out, source)
        return out


def _drawn_mask(index: Any, drawn: WeakTensorKeyDictionary) -> bool:
    """Whether ``index`` holds a boolean mask that is drawn."""
    return any(t.dtype == torch.bool and t in drawn for t in _tensors(index, []))


def _tensors(value: Any, found: list[torch.Tensor]) -> list[torch.Tensor]:
    """``found``, with the tensors in ``value`` added: itself, or those in its lists, tuples
    and dicts, and the leaves of another pytree node (what torch functions take and give).

    Walked by hand: ``tree_leaves`` on every op's arguments and results was most of what
    the mode cost a step.
    """
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensors(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _tensors(item, found)
    elif type(value) in SUPPORTED_NODES:
        found.extend(leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor))
    return found


COMPUTED = "parameters"
"""The source of a value computed from parameters (``computed_from``)."""

LOGGED = frozenset({"Tensor.item", "Tensor.__float__"})
"""Reads that forward makes of a computed value to log it, more often than to choose: not
choices when the value is computed from parameters (a drawn value read so is one)."""


def generators_of(modules: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The generators of Python or NumPy the model may draw from, by name: each
    ``random.Random``, NumPy ``Generator`` or ``RandomState`` an attribute of one of
    ``modules`` (``(name, module)`` pairs: ``layers.0.rng``), or a global of a Python
    module defining one of their classes (``mymodel.RNG``); not the global ones, which
    are watched as modules."""
    numpy_random = sys.modules.get("numpy.random")
    kinds: tuple[type, ...] = (random.Random,)
    seen = {id(random._inst)}  # what random's functions draw from
    if numpy_random is not None:
        kinds += (numpy_random.Generator, numpy_random.RandomState)
        seen.add(id(numpy_random.mtrand._rand))
    places: dict[int, tuple[str, dict[str, Any]]] = {}
    for name, module in modules:
        places[id(module)] = (f"{name}." if name else "", vars(module))
        defined = sys.modules.get(type(module).__module__)
        if defined is not None:
            places.setdefault(id(defined), (f"{defined.__name__}.", vars(defined)))
    found: dict[str, Any] = {}
    for prefix, values in places.values():
        for attr, value in list(values.items()):
            if _is(value, kinds) and id(value) not in seen:
                seen.add(id(value))
                found[f"{prefix}{attr}"] = value
    return found


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    """``isinstance``, False for an object whose ``__class__`` raises (a global of the
    model's file may be any object)."""
    try:
        return isinstance(value, kinds)
    except Exception:
        return False


@contextmanager
def watching_draws(
    on_choice: Callable[[str, str], None],
    computed_from: Sequence[torch.Tensor] = (),
    generators: Mapping[str, Any] | None = None,
) -> Iterator[Callable[[Sequence[torch.Tensor]], None]]:
    """Meanwhile, tell ``on_choice`` of each choice made from a value torch drew at random,
    or (``computed_from``: parameters) computed from one of those tensors (its source
    :data:`COMPUTED`), and of each draw from Python's or NumPy's global generator (read
    :data:`PYTHON_READ`) or from one of ``generators`` (:func:`generators_of`; read
    :data:`MOVED`).

    torch's random functions are wrapped while it is open; the first draw
    enters a :class:`Draws` mode, left as this ends (with ``computed_from``,
    entered at once: every op then pays for it). It yields a function that
    adds tensors to ``computed_from`` while it is open (the unsharded
    parameters FSDP2 puts in a unit's place as the unit runs).
    """
    mode = Draws(on_choice)
    saved: list[tuple[Any, str, Any]] = []
    open_ = [True]

    def follow(tensors: Sequence[torch.Tensor]) -> None:
        if not open_[0]:
            return
        mode.mark(list(tensors), COMPUTED)
        if not mode.entered:
            mode.__enter__()
            mode.entered = True

    if computed_from:
        follow(computed_from)

    def drawing(owner: Any, name: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        source = f"torch.{name}" if owner is torch else f"Tensor.{name}"

        def draw(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if not mode.entered:
                mode.__enter__()
                mode.entered = True
            mode.mark(out, source)
            return out

        saved.append((owner, name, original))
        setattr(owner, name, draw)

    numbers: list[Any] = [random]
    numpy_random = sys.modules.get("numpy.random")  # never imported here: a user's, if any
    if numpy_random is not None:
        numbers.append(numpy_random)
    told: set[str] = set()
    forward = threading.get_ident()

    def drawing_number(owner: Any, name: str) -> None:
        original = getattr(owner, name, None)
        if not callable(original):
            return
        source = f"{owner.__name__}.{name}"

        def draw(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == forward:  # another thread's draw is its own
                told.add(owner.__name__)
                on_choice(source, PYTHON_READ)
            return original(*args, **kwargs)

        saved.append((owner, name, original))
        setattr(owner, name, draw)

    for name in SOURCES:
        drawing(torch, name)
    for name in TENSOR_SOURCES:
        drawing(torch.Tensor, name)
    for owner in numbers:
        for name in PYTHON_SOURCES if owner is random else NUMPY_SOURCES:
            drawing_number(owner, name)
    before = [_state(owner) for owner in numbers]
    own, own_before = dict(generators or {}), {}
    for name, generator in own.items():  # a random.SystemRandom has no state to read
        with contextlib.suppress(NotImplementedError, AttributeError, TypeError):
            own_before[name] = _state(generator)
    try:
        yield follow
        # A draw by a function bound before the run (from random import uniform) is seen
        # only as the generator's state moving: told as a draw of forward's call.
        for owner, state in zip(numbers, before, strict=True):
            if owner.__name__ not in told and _state(owner) != state:
                on_choice(f"{owner.__name__}'s generator", MOVED)
        for name, state in own_before.items():
            if _state(own[name]) != state:
                on_choice(f"{name}'s generator", MOVED)
    finally:
        open_[0] = False
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
        if mode.entered:
            mode.__exit__(None, None, None)


def _state(generator: Any) -> Any:
    """The state of Python's global generator, or of NumPy's (``generator``: its module),
    or of a ``random.Random``, NumPy ``Generator`` or ``RandomState``, as a comparable value."""
    if generator is random or isinstance(generator, random.Random):
        return generator.getstate()
    if not isinstance(generator, ModuleType) and hasattr(generator, "bit_generator"):
        return _comparable(generator.bit_generator.state)  # a NumPy Generator
    _, key, position, has_gauss, gauss = generator.get_state()
    return key.tobytes(), position, has_gauss, gauss


def _comparable(value: Any) -> Any:
    """``value`` with NumPy arrays (an MT19937 key) as bytes, so that ``==`` compares it."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    return value.tobytes() if hasattr(value, "tobytes") else value
