"""Loading a ``TARGET`` (``pkg.mod:Attr`` or ``path/to/file.py:Attr``) into a module."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from execorder.errors import TargetError

DEVICES = ("meta", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class LoadedTarget:
    """A model built from a target, with what happened on the way.

    Attributes:
        model: The module.
        target: The target text it was loaded from.
        device: Where it was built (``"meta"``, ``"cpu"``, ``"cuda"``), or
            None for a module instance taken as it was.
        notes: One-line remarks for the user (e.g. a fallback to CPU).
    """

    model: nn.Module
    target: str
    device: str | None
    notes: tuple[str, ...] = ()


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
        spec.loader.exec_module(module)
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
        return importlib.import_module(dotted)
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


def resolve_target(target: str) -> Any:
    """Import the module or file of ``target`` and return its attribute.

    ``Attr`` may be dotted (``Outer.Inner``).

    Raises:
        TargetError: If the module, file or attribute cannot be found.
    """
    source, attr = split_target(target)
    is_file = source.endswith(".py") or "/" in source or "\\" in source
    module = _import_file(Path(source)) if is_file else _import_module(source)
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
            flags = " ".join(f"--init {n}=VALUE" for n in missing)
            raise TargetError(f"{what} needs {', '.join(missing)}: pass {flags}") from None
        accepted = ", ".join(p.name for p in params) or "(none)"
        raise TargetError(f"{what}: {exc}; it accepts: {accepted}") from None


def _device_context(device: str) -> Any:
    return torch.device(device) if device != "cpu" else nullcontext()


def _build(factory: Callable[..., Any], kwargs: Mapping[str, Any], device: str) -> Any:
    with _device_context(device):
        return factory(**kwargs)


def _user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of the user's code in a traceback."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "/torch/" not in f.filename and "/execorder/" not in f.filename
    ]
    return f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


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
    """
    kwargs = dict(init_kwargs or {})
    if device is not None and device not in DEVICES:
        raise TargetError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TargetError("--device cuda was asked for but CUDA is not available here")
    obj = resolve_target(target)
    _, attr = split_target(target)

    if isinstance(obj, nn.Module):
        if kwargs:
            raise TargetError(
                f"{attr} is a module instance, so --init does not apply; "
                "point TARGET at its class or a factory function instead"
            )
        return LoadedTarget(obj, target, None)
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        what = f"{obj.__name__}()"
    elif callable(obj) and not inspect.isclass(obj):
        what = f"{attr}()"
    else:
        raise TargetError(
            f"{attr} is a {type(obj).__name__}, not an nn.Module, a subclass of it, "
            "or a function returning one"
        )
    _check_arguments(obj, kwargs, what)

    notes: list[str] = []
    chosen = device or "meta"
    try:
        model = _build(obj, kwargs, chosen)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if device is not None:
            hint = "; try --device cpu" if device == "meta" else ""
            raise TargetError(f"building {what} on {device} failed: {reason}{hint}") from exc
        notes.append(f"building {what} on the meta device failed ({reason}); built it on CPU")
        chosen = "cpu"
        try:
            model = _build(obj, kwargs, chosen)
        except Exception as exc2:
            reason2 = f"{type(exc2).__name__}: {exc2}".splitlines()[0]
            raise TargetError(f"building {what} failed{_user_frame(exc2)}: {reason2}") from exc2
    if not isinstance(model, nn.Module):
        raise TargetError(f"{what} returned a {type(model).__name__}, not an nn.Module")
    return LoadedTarget(model, target, chosen, tuple(notes))
