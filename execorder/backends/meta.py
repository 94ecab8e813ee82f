"""Meta runs with real inputs: parameters hold no data, values derived from inputs alone do.

A model built on the meta device has parameters with shapes and no values,
which is what lets a 70B-parameter model be profiled in a few hundred MB.
Its forward still reads values: transformers checks its masks and padding
(``(input_ids == pad).any()``), positions come from ``torch.arange``, and a
mixture-of-experts layer picks experts with ``nonzero``. Only values that
depend on parameters are unknowable; the rest can be computed.

:class:`MetaRun` is a dispatch mode (below autograd) that keeps, for each
tensor on meta whose value could be computed, a *shadow*: the same tensor,
real, on CPU. Devices are left exactly as the model makes them, so autograd
and the model's own device checks see what they would see on a real device:

- An op on real tensors only (the inputs, masks made from them) runs for
  real, as usual.
- An op with a tensor on meta, or asked to make one (``torch.arange(n,
  device=hidden.device)``, ``mask.to(hidden.device)``), runs on meta; when
  every input's value is known it also runs on the shadows, and its outputs
  get the results as theirs. So ``.item()`` of a mask moved to meta answers.
- A tensor written with values that are not known loses its shadow, and so
  does every view of it.

Shadows above :data:`REAL_LIMIT` bytes are not made: a long input cannot make
execorder allocate what the model itself would not.

Reading a value that depends on parameters follows a policy:

- a **selection** (``nonzero``, ``torch.where(mask)``, ``masked_select``, a
  boolean mask as an index: what routes tokens to experts) is assumed to keep
  every element, torch's own assumption for ``nonzero`` on meta; each one is
  reported to ``on_assumption`` so the report can mark what rests on it (with
  ``assume=False`` it is a value read instead);
- a **value read** (``.item()``, ``if tensor:``, an op whose output depends on
  values such as ``unique``) raises :class:`NeedsValues`, naming the op.

A real tensor written with values that are not known (a CPU tensor the model
makes itself, then fills from parameters) is a value read too: execorder
cannot move it to meta behind the model's back, and would otherwise hand the
model stale values.

Some meta kernels ask for a dtype the real kernels do not (``_grouped_mm``
wants bfloat16): such an op runs on meta in the dtype it asks for, and its
outputs get the dtype of its inputs back. Nothing is computed on meta, so
this changes no shape and no result.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten

REAL_LIMIT = 256 * 2**20
"""Bytes of real values one op may produce for a shadow; a larger output stays unknown."""

META = torch.device("meta")
CPU = torch.device("cpu")

# Ops whose output shape depends on which elements are non-zero: assumed all.
_SELECTIONS = frozenset(
    {aten.nonzero.default, aten.nonzero.out, aten.masked_select.default, aten.masked_select.out}
)
# Ops that take boolean masks as indices (a selection inside the op).
_INDEXING = frozenset(
    {
        aten.index.Tensor,
        aten._unsafe_index.Tensor,
        aten.index_put.default,
        aten.index_put_.default,
        aten._index_put_impl_.default,
        aten._unsafe_index_put.default,
    }
)
_VALUE_READS = frozenset({aten._local_scalar_dense.default, aten.equal.default})
# Ops that make a tensor without values (FSDP2's all-gather and reduce-scatter buffers):
# there is nothing to know, so no shadow is made for them, until one of _OVERWRITES fills
# the whole storage with known values.
_UNINITIALIZED = frozenset(
    {
        aten.empty.memory_format,
        aten.empty_strided.default,
        aten.empty_like.default,
        aten.new_empty.default,
        aten.new_empty_strided.default,
    }
)
# In-place ops that write every element of ``self``, whatever it held.
_OVERWRITES = frozenset(
    {
        aten.fill_.Scalar,
        aten.fill_.Tensor,
        aten.zero_.default,
        aten.copy_.default,
        aten.uniform_.default,
        aten.normal_.default,
    }
)
_META_WORD = re.compile(r"(?<![a-z])meta(?![a-z])", re.IGNORECASE)


class NeedsValues(RuntimeError):
    """An op needs values that a tensor on meta does not hold.

    Attributes:
        op: The op, as torch names it (``aten.unique_consecutive``), or the
            Python-level read (``Tensor.tolist``).
        what: What it does that needs values, for a person: the message.
    """

    def __init__(self, op: str, what: str) -> None:
        self.op, self.what = op, what
        super().__init__(what)

    def __reduce__(self) -> Any:
        return type(self), (self.op, self.what)


class WithoutValues(TorchFunctionMode):
    """A meta run that keeps no values, and notes each place a :class:`MetaRun` would differ.

    With no dispatch mode, ops on meta cost what they cost outside execorder.
    Plain meta raises on almost every read of a value (``.item()``,
    ``nonzero``, ``.tolist()``, a copy out of meta); the two things it does
    silently instead are stopped here: an op mixing real tensors with tensors
    on meta (``total += hidden`` into a CPU tensor the model made), and
    formatting a 0-dim tensor on meta (``f"{t}"`` gives its repr, not its
    value). Each op on meta that raises is noted in :attr:`refused`, also
    when the model catches the error and goes on: a run that refused
    anything must be made again as a :class:`MetaRun`, which answers with
    known values or refuses for good.

    Attributes:
        refused: The first op on meta that raised, or None.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refused: str | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        meta = real = False
        for item in (*args, *kwargs.values()):
            for x in item if isinstance(item, (list, tuple)) else (item,):
                if isinstance(x, torch.Tensor):
                    if x.is_meta:
                        meta = True
                    else:
                        real = True
        if not meta:
            return func(*args, **kwargs)
        try:
            if real:
                raise NeedsValues(_name(func), f"{_name(func)} mixes real and meta tensors")
            if func is torch.Tensor.__format__ and args[0].dim() == 0:
                raise NeedsValues("Tensor.__format__", "formatting a value on meta")
            return func(*args, **kwargs)
        except Exception:
            if self.refused is None:
                self.refused = _name(func)
            raise


def on_meta_without_values(value: Any) -> Any:
    """``value`` with each real tensor in it replaced by one on meta that keeps no value.

    What :meth:`MetaRun.adopt` does, without the values: for a forward that
    reads none, run on meta with no dispatch mode at all.
    """
    flat, spec = tree_flatten(value)
    moved = [
        x.detach().to(META).requires_grad_(x.requires_grad)
        if isinstance(x, torch.Tensor) and not x.is_meta
        else x
        for x in flat
    ]
    return tree_unflatten(moved, spec)


class MetaRun(TorchDispatchMode):
    """Run forward (and backward) with parameters on meta and inputs real.

    Args:
        on_assumption: Told the op's name each time a selection is assumed
            to keep every element.
        assume: False to treat selections as value reads (:class:`NeedsValues`).
        limit: Bytes of real values one op may produce for a shadow.
        source: What unknown values are computed from, for messages:
            ``"parameters"``, or ``"parameters and meta inputs"`` when
            inputs came without their values.

    Attributes:
        assumptions: How many selections were assumed.
        lifted: Ops run on meta in the dtype their meta kernel asks for.
    """

    def __init__(
        self,
        on_assumption: Callable[[str], None] | None = None,
        *,
        assume: bool = True,
        limit: int = REAL_LIMIT,
        source: str = "parameters",
    ) -> None:
        super().__init__()
        self.source = source
        self.on_assumption = on_assumption or (lambda _: None)
        self.assume = assume
        self.limit = limit
        self.assumptions = 0
        self.lifted: set[str] = set()
        self._shadow: Any = WeakTensorKeyDictionary()  # meta tensor -> its value, real
        # Shadows made when a whole storage without one was overwritten, by that meta storage:
        # a view of it made before has no shadow, and writing through it makes this one stale.
        self._filled: dict[int, Any] = {}
        # Shadow storages written with unknown values: freed (resized to nothing), and kept,
        # so that their ids stay unique.
        self._stale: dict[int, Any] = {}

    def __enter__(self) -> MetaRun:
        self._reads = _Reads(self)
        self._reads.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._reads.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._reads.__exit__(*exc)

    def adopt(self, value: Any) -> Any:
        """``value`` with each real tensor in it replaced by a copy on meta that knows its values.

        Forward's inputs enter the run this way, so that everything forward
        makes from them is on meta like the parameters, as on a real device
        everything would be on that device, and a tensor made from an input
        can be written with unknown values (``out = torch.zeros_like(x)``,
        then ``out[tokens] = expert(x[tokens])``). An input over the limit
        enters without its values.
        """
        flat, spec = tree_flatten(value)
        adopted = []
        for item in flat:
            if isinstance(item, torch.Tensor) and not item.is_meta:
                copy = item.detach().to(META).requires_grad_(item.requires_grad)
                if _bytes(item) <= self.limit:
                    self._shadow[copy] = item.detach().clone()
                item = copy
            adopted.append(item)
        return tree_unflatten(adopted, spec)

    def value(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """``tensor``'s value: itself when real, its shadow on meta; None if unknown."""
        if not tensor.is_meta:
            return tensor
        shadow = self._shadow.get(tensor)
        if shadow is None or (self._stale and _storage(shadow) in self._stale):
            return None
        return shadow

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        if not (_device_is_meta(kwargs) or any(x.is_meta for x in tensors)):
            return func(*args, **kwargs)
        written = _written(func, args, kwargs)
        filling = self._filling(func, written)
        values = []
        for x in flat:  # each value looked up once; the first unknown one stops the search
            if isinstance(x, torch.Tensor):
                x = filling if filling is not None and x is written[0] else self.value(x)
                if x is None:
                    break
            values.append(x)
        else:
            return self._known(func, flat, spec, values, written)
        if all(x.is_meta for x in tensors) and "device" not in kwargs:
            return self._unknown(func, flat, spec, written, (args, kwargs))
        return self._unknown(func, flat, spec, written)

    def _filling(self, func: Any, written: list[torch.Tensor]) -> torch.Tensor | None:
        """For an op overwriting all of a meta storage without values: a blank to write instead.

        What it held does not matter, so the op's values are known when its
        other inputs' are; the blank becomes the shadow.
        """
        if func not in _OVERWRITES or len(written) != 1 or not written[0].is_meta:
            return None
        tensor = written[0]
        if self.value(tensor) is not None or _bytes(tensor) > self.limit:
            return None
        storage = tensor.untyped_storage()
        whole = tensor.storage_offset() == 0 and tensor.is_contiguous()
        if not whole or tensor.numel() * tensor.element_size() != storage.nbytes():
            return None
        key = storage._cdata
        blank = torch.empty(tensor.shape, dtype=tensor.dtype)
        self._filled[key] = (weakref.ref(storage, lambda _: self._filled.pop(key, None)), blank)
        return blank

    def _known(
        self, func: Any, flat: list[Any], spec: Any, values: list[Any], written: list[torch.Tensor]
    ) -> Any:
        """Every input's value is known: run on meta, and on the values for the shadows."""
        real_args, real_kwargs = tree_unflatten(values, spec)
        asked = real_kwargs.get("device") if isinstance(real_kwargs, dict) else None
        if asked is not None and torch.device(asked).type != "meta":
            return func(*real_args, **real_kwargs)  # mask.cpu(): known, so real, as asked
        if _device_is_meta(real_kwargs):
            real_kwargs = {**real_kwargs, "device": CPU}
        if any(not w.is_meta for w in written):
            return func(*real_args, **real_kwargs)  # a real tensor written from known values
        args, kwargs = tree_unflatten(
            [_to_meta(x) if isinstance(x, torch.Tensor) else x for x in flat], spec
        )
        try:
            result = func(*args, **kwargs)
        except Exception:  # a value-dependent op (nonzero, unique): meta cannot tell its shape
            result = None
        else:
            if not written and (func in _UNINITIALIZED or _bytes(result) > self.limit):
                return result  # nothing to know, or too big to shadow: its value stays unknown
        real = func(*real_args, **real_kwargs)
        if result is None:
            result = _map(real, _to_meta)
        for out, shadow in zip(_leaves(result), _leaves(real), strict=False):
            if (
                isinstance(out, torch.Tensor)
                and isinstance(shadow, torch.Tensor)
                and out.is_meta
                and out.shape == shadow.shape
            ):
                self._shadow[out] = shadow
        return result

    def _unknown(
        self,
        func: Any,
        flat: list[Any],
        spec: Any,
        written: list[torch.Tensor],
        on_meta: tuple[Any, dict[str, Any]] | None = None,
    ) -> Any:
        """Some input's value is unknown: run on meta, under the policy for value reads.

        ``on_meta`` is ``(args, kwargs)`` when they are on meta already (the
        usual case: an op on parameters), so nothing needs moving.
        """
        if func in _VALUE_READS:
            raise NeedsValues(
                _name(func),
                f"reading a value computed from {self.source} (.item(), if tensor:, {_name(func)})",
            )
        for tensor in written:
            if not tensor.is_meta:
                raise NeedsValues(
                    _name(func),
                    f"{_name(func)} writes values computed from {self.source} into a tensor "
                    f"the model made on {tensor.device.type}",
                )
            shadow = self._shadow.get(tensor)
            if shadow is None:
                shadow = self._filled.get(tensor.untyped_storage()._cdata, (None, None))[1]
            if shadow is not None:  # its values, and its views', are stale: freed, not read again
                storage = shadow.untyped_storage()
                self._stale[_storage(shadow)] = storage
                storage.resize_(0)
        if func in _INDEXING and _has_mask(flat, spec):
            flat, spec = self._known_masks(func, flat, spec)
            on_meta = None
        elif func in (aten.masked_select.default, aten.masked_select.out):
            mask = self.value(flat[1]) if isinstance(flat[1], torch.Tensor) else None
            if mask is not None:  # the data is unknown, but which elements are kept is not
                shape = torch.broadcast_shapes(flat[0].shape, mask.shape)
                count = int(torch.broadcast_to(mask, shape).sum())
                return aten.empty.memory_format((count,), dtype=flat[0].dtype, device=META)
        if on_meta is None:
            moved = [_to_meta(x) if isinstance(x, torch.Tensor) else x for x in flat]
            args, kwargs = tree_unflatten(moved, spec)
            on_meta = (args, _to_meta_args(kwargs))
        if func in _SELECTIONS or (func in _INDEXING and _has_mask(*tree_flatten(on_meta))):
            return self._select(func, *on_meta)
        return self._run(func, *on_meta)

    def _known_masks(self, func: Any, flat: list[Any], spec: Any) -> tuple[list[Any], Any]:
        """Boolean mask indices whose values are known, as the integer indices they select."""
        args, kwargs = tree_unflatten(flat, spec)
        indices = []
        for index in args[1]:
            mask = self.value(index) if _is_mask(index) else None
            if mask is None:
                indices.append(index)
            else:  # as torch does: a k-dim mask is k integer indices
                indices += [_to_meta(i) for i in mask.nonzero().unbind(1)]
        return tree_flatten(((args[0], indices, *args[2:]), kwargs))

    def _select(self, func: Any, args: Any, kwargs: Any) -> Any:
        """A selection from unknown values: assume it keeps every element (or refuse)."""
        if not self.assume:
            raise NeedsValues(
                _name(func),
                f"{_name(func)} selects by values computed from {self.source} (not assumed)",
            )
        self.assumptions += 1
        self.on_assumption(_name(func))
        if func in (aten.masked_select.default, aten.masked_select.out):
            shape = torch.broadcast_shapes(args[0].shape, args[1].shape)
            return args[0].new_empty((torch.Size(shape).numel(),))
        before = fx_config.meta_nonzero_assume_all_nonzero
        fx_config.meta_nonzero_assume_all_nonzero = True
        try:
            result = self._run(func, args, kwargs)
        finally:
            fx_config.meta_nonzero_assume_all_nonzero = before
        if func is aten.nonzero.default and result.numel() * 8 <= self.limit:
            # Every element non-zero: the indices are every position, in order, and known.
            every = torch.ones(args[0].shape, dtype=torch.bool).nonzero()
            self._shadow[result] = every
        return result

    def _run(self, func: Any, args: Any, kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NotImplementedError as exc:
            raise NeedsValues(
                _name(func),
                f"{_name(func)} of values computed from {self.source} (its output depends on them)",
            ) from exc
        except RuntimeError as exc:
            wanted = _dtype_wanted(exc)
            if wanted is not None:
                self.lifted.add(_name(func))
                return _lifted(func, args, kwargs, wanted)
            if _META_WORD.search(str(exc)):
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise NeedsValues(_name(func), f"{_name(func)}: {reason}") from exc
            raise


class _Reads(TorchFunctionMode):
    """What happens to values at Python level, which dispatch does not see.

    ``tolist()`` and ``numpy()`` read memory directly, and ``f"{t}"`` of a
    0-dim tensor on meta prints its repr where a real run prints its value:
    known values answer, unknown ones are value reads. Values written in
    Python reach a meta tensor without an op: ``torch.tensor(data,
    device=meta)`` and an index list (``ids[:, [-1, 0]]``) are made on CPU
    first and moved, so they are known too.
    """

    READS = frozenset({torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__format__})
    MADE = frozenset({torch.tensor, torch.as_tensor})
    INDEXED = frozenset({torch.Tensor.__getitem__, torch.Tensor.__setitem__})

    def __init__(self, run: MetaRun) -> None:
        super().__init__()
        self.run = run

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in self.MADE and _device_is_meta(kwargs):
            return func(*args, **{**kwargs, "device": CPU}).to(META)  # a known value, moved
        if not (args and isinstance(args[0], torch.Tensor) and args[0].is_meta):
            return func(*args, **kwargs)
        if func in self.INDEXED:
            return func(args[0], _listed(args[1]), *args[2:], **kwargs)
        if func in self.READS:
            tensor = args[0]
            value = self.run.value(tensor)
            if value is not None:
                return func(value, *args[1:], **kwargs)
            if func is not torch.Tensor.__format__ or tensor.dim() == 0:
                name = f"Tensor.{getattr(func, '__name__', func)}"
                raise NeedsValues(name, f"reading values computed from {self.run.source} ({name})")
        return func(*args, **kwargs)


def _listed(index: Any) -> Any:
    """An index with its lists of ints or bools as tensors on CPU (where values are kept)."""
    if isinstance(index, tuple):
        return tuple(_listed(i) for i in index)
    if isinstance(index, list) and index and _all_numbers(index):
        return torch.tensor(index)
    return index


def _all_numbers(values: list[Any]) -> bool:
    """Whether a (nested) list holds only ints and bools, as an index list does."""
    stack: list[Any] = list(values)
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif not isinstance(item, int):  # bool is an int
            return False
    return True


def _name(func: Any) -> str:
    """``aten.nonzero`` for ``aten.nonzero.default``; other overloads keep their name."""
    return str(func).removesuffix(".default")


def _storage(tensor: torch.Tensor) -> int:
    """Which storage ``tensor`` views (unique while that storage lives)."""
    return int(tensor.untyped_storage()._cdata)


def _device_is_meta(kwargs: Any) -> bool:
    device = kwargs.get("device") if isinstance(kwargs, dict) else None
    return device is not None and torch.device(device).type == "meta"


def _to_meta_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the op on meta: a device asked for is meta."""
    if kwargs.get("device") is not None and not _device_is_meta(kwargs):
        return {**kwargs, "device": META}  # hidden.to("cpu") from meta: still unknown
    return kwargs


def _to_meta(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_meta:
        return tensor
    return aten._to_copy.default(tensor, device=META)


_WRITES: dict[Any, tuple[tuple[int, str], ...]] = {}


def _written(func: Any, args: Any, kwargs: Any) -> list[torch.Tensor]:
    """The tensors ``func`` writes into (``self`` of an in-place op, ``out=``)."""
    writes = _WRITES.get(func)
    if writes is None:
        writes = _WRITES[func] = tuple(
            (position, argument.name)
            for position, argument in enumerate(func._schema.arguments)
            if argument.alias_info is not None and argument.alias_info.is_write
        )
    found: list[torch.Tensor] = []
    for position, name in writes:
        value = args[position] if position < len(args) else kwargs.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        found += [v for v in values if isinstance(v, torch.Tensor)]
    return found


def _is_mask(index: Any) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _has_mask(flat: list[Any], spec: Any) -> bool:
    """Whether an indexing op's indices (its second argument) hold a boolean mask."""
    args, _ = tree_unflatten(flat, spec)
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(_is_mask(i) for i in indices)


def _bytes(value: Any) -> int:
    return sum(x.numel() * x.element_size() for x in _leaves(value) if isinstance(x, torch.Tensor))


def _leaves(value: Any) -> list[Any]:
    return tree_flatten(value)[0]


def _map(value: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    flat, spec = tree_flatten(value)
    return tree_unflatten([change(x) if isinstance(x, torch.Tensor) else x for x in flat], spec)


def _dtype_wanted(exc: RuntimeError) -> torch.dtype | None:
    """The dtype a meta kernel's error asks for (``Expected inputs of BF16 type``), if any."""
    text = str(exc).lower()
    if "expected" in text and ("bf16" in text or "bfloat16" in text):
        return torch.bfloat16
    return None


def _lifted(func: Any, args: Any, kwargs: Any, dtype: torch.dtype) -> Any:
    """Run ``func`` on meta in ``dtype``; give floating outputs the inputs' floating dtype."""
    floating = [
        x for x in _leaves((args, kwargs)) if isinstance(x, torch.Tensor) and x.is_floating_point()
    ]
    if not floating:
        raise NeedsValues(_name(func), f"{_name(func)}: its meta kernel wants {dtype}")
    original = floating[0].dtype

    def lift(x: torch.Tensor) -> torch.Tensor:
        return aten._to_copy.default(x, dtype=dtype) if x.is_floating_point() else x

    def back(x: torch.Tensor) -> torch.Tensor:
        return aten._to_copy.default(x, dtype=original) if x.is_floating_point() else x

    return _map(func(*_map(args, lift), **_map(kwargs, lift)), back)
