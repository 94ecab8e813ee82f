"""Loading a ``TARGET`` (``pkg.mod:Attr`` or ``path/to/file.py:Attr``) into a module."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from execorder.errors import (
    BuildError,
    DeviceError,
    InitArgsError,
    InputsError,
    InstanceInitError,
    MemoryGuardError,
    TargetError,
    UserExitError,
    first_line,
    user_code,
    user_frame,
)
from execorder.loading.frameworks import built_model
from execorder.loading.memory import capped

DEVICES = ("meta", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class LoadedTarget:
    """A model built from a target, with what happened on the way.

    Attributes:
        model: The module.
        target: The target text it was loaded from.
        device: Where it was built (``"meta"``, ``"cpu"``, ``"cuda"``), or
            None for a module instance taken as it was.
        what: The call that built it (``"Net()"``), or None for an instance.
        meta_failure: Why building on the meta device failed, when it was
            then built on CPU; else None.
    """

    model: nn.Module
    target: str
    device: str | None
    what: str | None = None
    meta_failure: str | None = None

    @property
    def notes(self) -> tuple[str, ...]:
        """One-line remarks for the user (a fallback to CPU)."""
        if self.meta_failure is None:
            return ()
        return (
            f"building {self.what} on the meta device failed ({self.meta_failure}); "
            "built it on CPU",
        )


def split_target(target: str) -> tuple[str, str]:
    """Split ``TARGET`` into its module or file part and its attribute.

    Raises:
        TargetError: If the ``:Attr`` part is missing or empty.
    """
    source, sep, attr = target.rpartition(":")
    if not sep or not source or not attr:
        raise TargetError(
            f"target {target!r} must be 'package.module:Attr' or 'path/to/file.py:Attr'"
        )
    return source, attr


def _syntax_error_message(exc: SyntaxError) -> str:
    where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
    return f"syntax error in {where}: {exc.msg}"


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise TargetError(f"no such file: {path}")
    folder = str(path.resolve().parent)
    # Sibling imports in the user's file (``from blocks import Block``) need
    # its folder importable.
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = f"_execorder_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with user_code(f"importing {path}"):
            spec.loader.exec_module(module)
    except UserExitError:
        del sys.modules[name]
        raise
    except SyntaxError as exc:
        del sys.modules[name]
        raise TargetError(_syntax_error_message(exc)) from exc
    except Exception as exc:
        del sys.modules[name]
        raise TargetError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(dotted: str) -> Any:
    # As with ``python -m``, modules in the working directory are importable
    # (a console script does not put it on sys.path by itself).
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        with user_code(f"importing {dotted}"):
            return importlib.import_module(dotted)
    except UserExitError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (dotted == exc.name or dotted.startswith(exc.name + ".")):
            raise TargetError(
                f"no module named {dotted!r} (is it installed, or on PYTHONPATH? "
                "A file path ending in .py works too)"
            ) from exc
        raise TargetError(f"importing {dotted} failed: {exc}") from exc
    except SyntaxError as exc:
        raise TargetError(_syntax_error_message(exc)) from exc
    except Exception as exc:
        raise TargetError(f"importing {dotted} failed: {type(exc).__name__}: {exc}") from exc


def target_file(target: str) -> Path | None:
    """The file a ``path/to/file.py:Attr`` target names; None for a dotted module or no target."""
    source, sep, attr = target.rpartition(":")
    if not sep or not source or not attr or not _is_file(source):
        return None
    return Path(source)


def _is_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def resolve_target(target: str) -> Any:
    """Import the module or file of ``target`` and return its attribute.

    ``Attr`` may be dotted (``Outer.Inner``).

    Raises:
        TargetError: If the module, file or attribute cannot be found.
    """
    source, attr = split_target(target)
    module = _import_file(Path(source)) if _is_file(source) else _import_module(source)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = sorted(
                n
                for n, v in vars(module).items()
                if not n.startswith("_") and _is_buildable(v) and _defined_in(v, module)
            )
            hint = f"; it has: {', '.join(public)}" if public else ""
            raise TargetError(f"{source} has no attribute {attr!r}{hint}") from None
    return obj


def resolve_inputs(target: str) -> Callable[..., Any]:
    """The function making forward's inputs that ``target`` names, loaded.

    Raises:
        InputsError: If it cannot be loaded, or is not a function.
    """
    try:
        factory = resolve_target(target)
    except TargetError as exc:
        raise InputsError(target, f"cannot be loaded: {exc}") from exc
    if not callable(factory):
        raise InputsError(target, f"is a {type(factory).__name__}, not a function")
    return factory


def _defined_in(value: Any, module: Any) -> bool:
    return getattr(value, "__module__", module.__name__) == module.__name__


def _is_buildable(value: Any) -> bool:
    return (
        isinstance(value, nn.Module)
        or (inspect.isclass(value) and issubclass(value, nn.Module))
        or inspect.isfunction(value)
    )


def _check_arguments(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        params = signature.parameters.values()
        missing = [
            p.name
            for p in params
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in kwargs
        ]
        if missing:
            raise InitArgsError(what, missing=missing) from None
        accepted = [p.name for p in params]
        raise InitArgsError(what, problem=str(exc), accepted=accepted) from None


def _device_context(device: str) -> Any:
    return torch.device(device) if device != "cpu" else nullcontext()


def _build(factory: Callable[..., Any], kwargs: Mapping[str, Any], device: str) -> Any:
    name = getattr(factory, "__name__", "the model")
    with user_code(f"building {name}()"), _device_context(device):
        return built_model(factory(**kwargs))


def load_target(
    target: str,
    *,
    init_kwargs: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> LoadedTarget:
    """Load ``TARGET`` and build the model.

    ``Attr`` may be an ``nn.Module`` subclass (called with ``init_kwargs``), a
    function returning an ``nn.Module`` (called with ``init_kwargs``), or an
    ``nn.Module`` instance (used as it is).

    Args:
        target: ``package.module:Attr`` or ``path/to/file.py:Attr``.
        init_kwargs: Keyword arguments for the class or factory.
        device: ``"meta"``, ``"cpu"`` or ``"cuda"``. None builds on meta (no
            memory, no initialisation) and falls back to CPU if that fails.

    Returns:
        The built model and notes for the user.

    Raises:
        TargetError: If the target cannot be loaded or built.
        DeviceError: If the device is unknown or not available.
    """
    check_device(device)
    obj = resolve_target(target)
    _, attr = split_target(target)
    if isinstance(obj, nn.Module):
        if init_kwargs:
            raise InstanceInitError(attr)
        return LoadedTarget(obj, target, None)
    return build(obj, init_kwargs=init_kwargs, device=device, name=attr, target=target)


def check_device(device: str | None) -> None:
    """Check that ``device`` (None: the default) is known and available.

    Raises:
        DeviceError: If it is not.
    """
    if device is not None and device not in DEVICES:
        raise DeviceError(device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError(device, DEVICES, unavailable=True)


def build(
    factory: Any,
    *,
    init_kwargs: Mapping[str, Any] | None = None,
    device: str | None = None,
    name: str | None = None,
    target: str | None = None,
) -> LoadedTarget:
    """Build a model from an ``nn.Module`` subclass or a function returning one.

    Args:
        factory: The class or function.
        init_kwargs: Its keyword arguments.
        device: ``"meta"``, ``"cpu"`` or ``"cuda"``. None builds on meta and
            falls back to CPU, with a note, if that fails.
        name: What to call it in messages; its ``__name__`` by default.
        target: The target text it came from, for the result.

    Raises:
        TargetError: If it is not buildable, does not take the arguments, or raises.
    """
    kwargs = dict(init_kwargs or {})
    name = name or str(getattr(factory, "__name__", type(factory).__name__))
    if inspect.isclass(factory) and issubclass(factory, nn.Module):
        what = f"{factory.__name__}()"
    elif callable(factory) and not inspect.isclass(factory):
        what = f"{name}()"
    else:
        raise TargetError(
            f"{name} is a {type(factory).__name__}, not an nn.Module, a subclass of it, "
            "or a function returning one"
        )
    _check_arguments(factory, kwargs, what)

    meta_failure = None
    chosen = device or "meta"
    try:
        model = _build(factory, kwargs, chosen)
    except UserExitError:
        raise
    except Exception as exc:
        if device is not None:
            raise BuildError(
                what, device, first_line(exc), where=user_frame(exc), chosen=True
            ) from exc
        meta_failure = first_line(exc)
        chosen = "cpu"
        try:
            with capped(what):
                model = _build(factory, kwargs, chosen)
        except (UserExitError, MemoryGuardError):
            raise
        except Exception as exc2:
            raise BuildError(
                what, chosen, first_line(exc2), where=user_frame(exc2), chosen=False
            ) from exc2
    if not isinstance(model, nn.Module):
        raise TargetError(f"{what} returned a {type(model).__name__}, not an nn.Module")
    if chosen == "meta":
        onto_meta(model)
    return LoadedTarget(model, target or name, chosen, what, meta_failure)


def onto_meta(model: nn.Module) -> int:
    """Move to meta what a constructor made on a real device despite being asked for meta.

    Legacy constructors (``nn.Parameter(torch.FloatTensor(n, m))``, as XLNet
    uses) ignore the device context. Left on CPU, such a parameter would get
    a meta gradient in backward. Parameters keep their identity (ties hold)
    and class; buffers are replaced.

    Returns:
        How many tensors were moved.
    """
    moved = 0
    seen: set[int] = set()
    buffers: dict[int, torch.Tensor] = {}
    stack = [model]
    with torch.no_grad():
        while stack:
            module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            for param in module._parameters.values():
                if param is None or param.is_meta or id(param) in seen:
                    continue
                seen.add(id(param))
                kind = type(param)
                new = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
                torch.utils.swap_tensors(param, new)
                param.__class__ = kind
                moved += 1
            for key, buffer in module._buffers.items():
                if buffer is not None and not buffer.is_meta:
                    if id(buffer) not in buffers:
                        buffers[id(buffer)] = buffer.to("meta")
                        moved += 1
                    module._buffers[key] = buffers[id(buffer)]
            stack.extend(c for c in module._modules.values() if c is not None)
    return moved


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on meta: its modules copied, its tensors made anew without values.

    Nothing of the model is changed, and none of its memory is copied: each
    parameter and buffer is given (through ``copy.deepcopy``'s memo) a meta
    tensor of its shape, dtype and ``requires_grad``, the same one wherever it
    is shared (ties hold). Other attributes are deep-copied.

    Raises:
        TargetError: When the model cannot be copied.
    """
    import copy

    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) not in memo:
            empty = torch.empty_like(tensor, device="meta")
            if isinstance(tensor, nn.Parameter):
                empty = nn.Parameter(empty, requires_grad=tensor.requires_grad)
            memo[id(tensor)] = empty
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:
        raise TargetError(
            f"{type(model).__name__} cannot be copied onto meta ({type(exc).__name__}: {exc}); "
            "give its class, a function building it, or a TARGET"
        ) from exc
