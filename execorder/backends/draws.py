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
``np.random.rand``). So is a call of a method of any ``random.Random`` from
the model's code (:func:`packages_of`), wherever the generator is held: the
methods are wrapped on the class. Where nothing is called through a wrapper
(``from random import random``, a function of C bound before the run), a
draw is seen only as the generator's state moving, as one choice of
forward's whole call (another thread's draw meanwhile is then taken for
forward's); so is a draw of a NumPy ``Generator`` or ``RandomState`` of the
model's own, held by one of its modules, an object, closure, dict or list one
holds, its class, or the globals of a module defining their classes
(:func:`generators_of`), or made by ``np.random.default_rng`` while forward
runs; one held elsewhere is not. A generator of the model's own (those, or a
``torch.Generator`` passed as ``generator=``) is told as such: the run's seed
does not set it.

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
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FunctionType, ModuleType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import SUPPORTED_NODES, tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from execorder.recording import module_tree

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
    "getrandbits", "binomialvariate", "randbytes",
)  # fmt: skip
"""Python's ``random`` functions (those of its module-level generator), and the methods of
``random.Random`` that draw."""

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
        on_choice: Told ``(source, read, own)`` at each choice: the random
            function whose draw it reads (``torch.rand``), how
            (``Tensor.__bool__``), and whether it drew from a generator of the
            model's own (``generator=``), which the run's seed does not set.
    """

    def __init__(self, on_choice: Callable[[str, str, bool], None]) -> None:
        super().__init__()
        self.on_choice = on_choice
        self.drawn: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.entered = False

    def mark(self, value: Any, source: str, own: bool = False) -> None:
        for tensor in _tensors(value, []):
            self.drawn[tensor] = (source, own)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        drawn = self.drawn
        if not len(drawn):
            return out
        found = None
        for tensor in _tensors(kwargs, _tensors(args, [])):
            found = drawn.get(tensor)
            if found is not None:
                break
        if found is None:
            return out
        source, own = found
        read = _READS.get(func)
        if read is None and func in _INDEXING and _drawn_mask(args[1:2], self.drawn):
            read = "a boolean mask as an index"
        if read is not None:
            self.on_choice(source, read, own)
        self.mark(out, source, own)
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


def generators_of(modules: Iterable[tuple[str, Any]], *, torch_too: bool = False) -> dict[str, Any]:
    """The generators of Python or NumPy the model may draw from, by name: each
    ``random.Random``, NumPy ``Generator`` or ``RandomState`` an attribute of one of
    ``modules`` (``(name, module)`` pairs: ``layers.0.rng``), of their classes, or a
    global of a Python module defining one of their classes (``mymodel.RNG``), or held
    by an object, a function's closure, a dict or a list one of those holds
    (``schedule.rng``, ``keep.rng``, ``rngs['drop']``); not the global ones, which are
    watched as modules. ``torch_too``: each ``torch.Generator`` held so too, but torch's
    default ones."""
    numpy_random = sys.modules.get("numpy.random")
    kinds: tuple[type, ...] = (random.Random, torch.Generator) if torch_too else (random.Random,)
    seen = {id(random._inst)} | _torch_defaults()  # what the seed sets
    if numpy_random is not None:
        kinds += (numpy_random.Generator, numpy_random.RandomState)
        seen.add(id(numpy_random.mtrand._rand))
    places: dict[int, tuple[str, Mapping[str, Any]]] = {}
    for name, module in modules:
        places[id(module)] = (f"{name}." if name else "", vars(module))
        for cls in type(module).__mro__:  # a generator the class holds
            if not cls.__module__.startswith(("torch.", "builtins")):
                places.setdefault(id(cls), (f"{cls.__qualname__}.", vars(cls)))
        defined = sys.modules.get(type(module).__module__)
        if defined is not None:
            places.setdefault(id(defined), (f"{defined.__name__}.", vars(defined)))
    for prefix, values in list(places.values()):  # and one an object, closure or list holds
        for attr, value in list(values.items()):
            if id(value) in places or attr in _MODULE_STATE:
                continue
            if type(value) in _CONTAINERS:  # rngs["drop"], rngs[0]
                items = value.items() if isinstance(value, dict) else enumerate(value)
                places[id(value)] = (f"{prefix}{attr}", {f"[{k!r}]": v for k, v in items})
            elif type(value) not in _HOLDS_NONE and (held := _held_by(value)) is not None:
                places[id(value)] = (f"{prefix}{attr}.", held)
    found: dict[str, Any] = {}
    for prefix, values in places.values():
        for attr, value in list(values.items()):
            if type(value) not in _HOLDS_NONE and _is(value, kinds) and id(value) not in seen:
                seen.add(id(value))
                found[f"{prefix}{attr}"] = value
    return found


_CONTAINERS = frozenset({dict, OrderedDict, list, tuple})
"""Containers whose items are scanned (one level, as an object's attributes are)."""

_MODULE_STATE = frozenset(vars(torch.nn.Module()))
"""What every ``nn.Module`` holds (its parameters, buffers, submodules, hooks): scanned
otherwise, or holding no generator."""

_HOLDS_NONE = frozenset({
    bool, int, float, str, bytes, type(None), dict, OrderedDict, list, tuple, set, frozenset,
    torch.Tensor, torch.nn.Parameter, torch.dtype, torch.device, torch.Size,
})  # fmt: skip
"""Types an attribute of a module most often has, which are no generator and hold none
by name: passed over at once (a model of a thousand modules has tens of thousands)."""


def _torch_defaults() -> set[int]:
    """The ids of torch's default generators, which ``torch.manual_seed`` (the run's seed)
    sets."""
    return {id(torch.default_generator)} | {id(g) for g in torch.cuda.default_generators}


def _held_by(value: Any) -> Mapping[str, Any] | None:
    """What ``value`` holds by name: a function's closure (by the names it reads), or an
    object's attributes; None for a class, a Python module, a tensor or an ``nn.Module``
    (each scanned otherwise, or holding none), or anything else."""
    try:
        if type(value) is FunctionType:
            closed: dict[str, Any] = {}
            for name, cell in zip(value.__code__.co_freevars, value.__closure__ or (), strict=True):
                with contextlib.suppress(ValueError):  # a cell not filled yet
                    closed[name] = cell.cell_contents
            return closed
        if isinstance(value, (type, ModuleType, torch.nn.Module, torch.Tensor)):
            return None
        held = getattr(value, "__dict__", None)
        return held if isinstance(held, dict) else None
    except Exception:  # an odd object of the model's file
        return None


def packages_of(modules: Iterable[tuple[str, Any]]) -> frozenset[str]:
    """The top-level packages (or modules) defining the classes of ``modules`` (``(name,
    module)`` pairs), torch's aside: the model's code, where a draw of a ``random.Random``
    is the model's."""
    return frozenset(type(module).__module__.split(".")[0] for _, module in modules) - {"torch"}


def _drawing_site(method: str) -> tuple[str, str]:
    """The ``random.Random`` method the code drawing called (``method``, or the one of
    ``random``'s that called it: ``uniform`` calls ``random``), and that code's top-level
    package."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in (random.__file__, __file__):
        if frame.f_code.co_filename == random.__file__:
            method = frame.f_code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return method, "" if frame is None else str(frame.f_globals.get("__name__", "")).split(".")[0]


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    """``isinstance``, False for an object whose ``__class__`` raises (a global of the
    model's file may be any object)."""
    try:
        return isinstance(value, kinds)
    except Exception:
        return False


@contextmanager
def watching_draws(
    on_choice: Callable[[str, str, bool], None],
    computed_from: Sequence[torch.Tensor] = (),
    generators: Mapping[str, Any] | None = None,
    packages: frozenset[str] = frozenset(),
) -> Iterator[Callable[[Sequence[torch.Tensor]], None]]:
    """Meanwhile, tell ``on_choice`` of each choice made from a value torch drew at random,
    or (``computed_from``: parameters) computed from one of those tensors (its source
    :data:`COMPUTED`), and of each draw from Python's or NumPy's global generator or any
    ``random.Random`` that code of ``packages`` (:func:`packages_of`: the model's) calls
    (read :data:`PYTHON_READ`), or seen as the state of one of ``generators``
    (:func:`generators_of`), or of a NumPy generator ``np.random.default_rng`` makes
    meanwhile, moving (read :data:`MOVED`). Its third argument says
    whether the generator was the model's own, which the run's seed does not set.
    Another package's generator is its own (sympy draws from one as torch imports it).

    torch's random functions are wrapped while it is open, and the methods of
    ``random.Random`` (every Python generator's); the first draw of torch's enters
    a :class:`Draws` mode, left as this ends (with ``computed_from``, entered at
    once: every op then pays for it). It yields a function that adds tensors to
    ``computed_from`` while it is open (the unsharded parameters FSDP2 puts in a
    unit's place as the unit runs).
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
    seeded = _torch_defaults()

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
            generator = kwargs.get("generator")
            mode.mark(out, source, generator is not None and id(generator) not in seeded)
            return out

        saved.append((owner, name, original))
        setattr(owner, name, draw)

    numbers: list[Any] = [random]
    numpy_random = sys.modules.get("numpy.random")  # never imported here: a user's, if any
    if numpy_random is not None:
        numbers.append(numpy_random)
    told: set[str] = set()
    forward = threading.get_ident()
    depth = [0]  # a draw that calls another (uniform calls random) is one
    own = dict(generators or {})
    names = {id(generator): name for name, generator in own.items()}
    drew: set[int] = set()  # the generators of the model's own seen drawing

    def drawn_by(call: Callable[..., Any], tell: Callable[[Any], None]) -> Callable[..., Any]:
        """``call``, telling ``tell(args)`` of its draws in forward's thread (another's are
        its own)."""

        def draw(*args: Any, **kwargs: Any) -> Any:
            if depth[0] or threading.get_ident() != forward:
                return call(*args, **kwargs)
            tell(args)
            depth[0] += 1
            try:
                return call(*args, **kwargs)
            finally:
                depth[0] -= 1

        return draw

    def drawing_number(owner: Any, name: str) -> None:
        original = getattr(owner, name, None)
        if not callable(original):
            return
        source = f"{owner.__name__}.{name}"

        def tell(_: Any) -> None:
            told.add(owner.__name__)
            on_choice(source, PYTHON_READ, False)

        saved.append((owner, name, original))
        setattr(owner, name, drawn_by(original, tell))

    methods: list[tuple[str, Any]] = []

    def drawing_method(name: str) -> None:
        """A method of ``random.Random``: a draw of any Python generator, wherever it is
        held (a helper object, a closure, another file)."""
        original = getattr(random.Random, name, None)
        if not callable(original):
            return

        def tell(args: Any) -> None:
            self, (called, package) = args[0], _drawing_site(name)
            if self is getattr(random, "_inst", None):  # random's function, bound before
                told.add("random")
                on_choice(f"random.{called}", PYTHON_READ, False)
            elif id(self) in names or package in packages:
                drew.add(id(self))
                on_choice(f"{names.get(id(self), 'random.Random')}.{called}", PYTHON_READ, True)

        methods.append((name, vars(random.Random).get(name)))
        setattr(random.Random, name, drawn_by(original, tell))

    for name in SOURCES:
        drawing(torch, name)
    for name in TENSOR_SOURCES:
        drawing(torch.Tensor, name)
    for owner in numbers:
        for name in PYTHON_SOURCES if owner is random else NUMPY_SOURCES:
            drawing_number(owner, name)
    for name in PYTHON_SOURCES:
        drawing_method(name)
    made: list[tuple[Any, Any]] = []  # NumPy generators forward made, with their state then
    if numpy_random is not None and callable(getattr(numpy_random, "default_rng", None)):
        make = numpy_random.default_rng

        def default_rng(*args: Any, **kwargs: Any) -> Any:
            generator = make(*args, **kwargs)
            if threading.get_ident() == forward:
                made.append((generator, _state(generator)))
            return generator

        saved.append((numpy_random, "default_rng", make))
        setattr(numpy_random, "default_rng", default_rng)  # noqa: B010 (a module's, typed)
    before = [_state(owner) for owner in numbers]
    own_before = {}
    for name, generator in own.items():  # a random.SystemRandom has no state to read
        with contextlib.suppress(NotImplementedError, AttributeError, TypeError):
            own_before[name] = _state(generator)
    try:
        yield follow
        # A draw by a function bound before the run (from random import random) is seen
        # only as the generator's state moving: told as a draw of forward's call.
        for owner, state in zip(numbers, before, strict=True):
            if owner.__name__ not in told and _state(owner) != state:
                on_choice(f"{owner.__name__}'s generator", MOVED, False)
        for name, state in own_before.items():
            if id(own[name]) not in drew and _state(own[name]) != state:
                on_choice(f"{name}'s generator", MOVED, True)
        for generator, state in made:
            if _state(generator) != state:
                on_choice("numpy.random.default_rng()'s generator", MOVED, True)
    finally:
        open_[0] = False
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
        for name, method in reversed(methods):
            if method is None:  # inherited from _random.Random
                delattr(random.Random, name)
            else:
                setattr(random.Random, name, method)
        if mode.entered:
            mode.__exit__(None, None, None)


@contextmanager
def generators_kept(model: torch.nn.Module) -> Iterator[None]:
    """The model's own generators (:func:`generators_of`, torch's too) as they were, after
    the block: a run of execorder's draws from them as the model's would, and leaves a
    model of the caller's as it found it (each run of one model then draws alike, as
    the run's seed makes torch's and the global ones)."""
    tree = module_tree(model)  # a walk of its own: a model too deep for named_modules runs
    named = [(tree.module_names[id(module)][0], module) for module in tree.modules]
    kept = []
    for generator in generators_of(named, torch_too=True).values():
        with contextlib.suppress(Exception):  # a random.SystemRandom has no state
            kept.append((generator, _saved(generator)))
    try:
        yield
    finally:
        for generator, state in kept:
            _restore(generator, state)


def _saved(generator: Any) -> Any:
    """A generator's state as it gives it back: Python's (``random``, a ``random.Random``),
    NumPy's (``numpy.random``, a ``Generator``, a ``RandomState``) or a ``torch.Generator``."""
    if generator is random or isinstance(generator, random.Random):
        return generator.getstate()
    if not isinstance(generator, ModuleType) and hasattr(generator, "bit_generator"):
        return generator.bit_generator.state  # a NumPy Generator
    return generator.get_state()  # torch's, NumPy's module or a RandomState


def _restore(generator: Any, state: Any) -> None:
    """Set what :func:`_saved` gave back."""
    if isinstance(generator, random.Random):
        generator.setstate(state)
    elif hasattr(generator, "bit_generator"):
        generator.bit_generator.state = state
    else:
        generator.set_state(state)


def _state(generator: Any) -> Any:
    """A generator's state (:func:`_saved`) as a value ``==`` compares."""
    return _comparable(_saved(generator))


def _comparable(value: Any) -> Any:
    """``value`` with NumPy arrays (an MT19937 key) as bytes, so that ``==`` compares it."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_comparable(item) for item in value)
    return value.tobytes() if hasattr(value, "tobytes") else value
