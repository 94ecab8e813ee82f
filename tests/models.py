"""Edge-case models for the tests. Models users see live in sample_models/."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves


class KeywordParam(nn.Module):
    """A parameter passed by keyword: PyTorch's tracer misses ``bias``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.bias = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, bias=self.bias)


class NestedParams(nn.Module):
    """Parameters inside a list and a dict argument."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(2, 4))
        self.b = nn.Parameter(torch.randn(3, 4))
        self.c = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([self.a, self.b], dim=0)
        return torch.addcmul(x, stacked, **{"tensor2": self.c})


class LeafArgParam(nn.Module):
    """A parameter fed straight into a leaf module call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.w) + x


class ReturnedParam(nn.Module):
    """A parameter returned as it is, without any op."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lin(x), self.scale


class InputNamedLikeParam(nn.Module):
    """A forward input called ``weight`` next to a parameter called ``weight``.

    The parameter is never read; PyTorch's tracer counts it as used because it
    matches nodes by name, placeholders included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.lin(x) @ weight


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.randn(4))
        self.extra = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor, use_extra: bool) -> torch.Tensor:
        x = x * self.base
        if use_extra:
            x = x + self.extra
        return x


class CalledTwice(nn.Module):
    """One module called twice, using different parameters each time."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gated()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.gate(x, False), True)


class StarUnpack(nn.Module):
    """Unpacks a traced shape with ``*``, which FX cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape)


class Raising(nn.Module):
    """Forward raises halfway through the trace."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        raise ValueError("boom in forward")


class Branchy(nn.Module):
    """Branches on a flag argument and on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, flag: bool = True, mode: str = "plain") -> torch.Tensor:
        if flag:
            x = self.lin(x)
        if mode == "double":
            x = x * 2
        return x


class DataDependent(nn.Module):
    """Branches on a value of its input: known on meta too, where inputs keep their values."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return x


class ParamDependent(nn.Module):
    """Branches on a value computed from its parameters: unknowable on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if y.sum() > 0:
            return self.out(y)
        return y


class NeedsRealTensors(nn.Module):
    """Its constructor reads a tensor value, which fails on the meta device."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = float(self.lin.weight.abs().sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) / self.norm


class NeedsWidth(nn.Module):
    def __init__(self, width: int, depth: int = 1) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError("width must be positive")
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def make_needs_width(width: int = 4, depth: int = 2) -> nn.Module:
    """A factory function target."""
    return NeedsWidth(width, depth)


not_a_module = 42
instance = NeedsWidth(3)


class ShapeOnly(nn.Module):
    """``w`` is read for its shape only, ``v`` is detached: neither gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 8))
        self.v = nn.Parameter(torch.randn(2, 8))
        self.lin = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x).reshape(x.shape[0], self.w.shape[0], self.w.shape[1])
        return y + self.v.detach()


class ArgmaxRouting(nn.Module):
    """The router picks an expert by argmax only, so it gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Parameter(torch.randn(4, 3))
        self.experts = nn.Parameter(torch.randn(3, 4))
        self.cast = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = (x @ self.router).argmax(-1)
        return x * self.experts[choice] + self.cast.to(torch.long)


class InPlace(nn.Module):
    """Parameters that reach the output only through in-place writes."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(4))
        self.first = nn.Parameter(torch.randn(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y.add_(self.bias)
        view = y.view(-1, 4)
        view[:, :2].copy_(self.first)
        return y


class Frozen(nn.Module):
    """Frozen parameters among trainable ones, some used, some not."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.embed.weight.requires_grad_(False)
        self.unused_frozen = nn.Parameter(torch.randn(3), requires_grad=False)
        self.mid = nn.Linear(4, 4)
        self.unused = nn.Parameter(torch.randn(3))
        self.head = nn.Linear(4, 2)
        self.head.bias.requires_grad_(False)
        self.aux = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.embed(x))
        self.aux(h)  # computed and thrown away: aux is dead
        return self.head(h)


class UnitTakesUnused(nn.Module):
    """A block (an FSDP2 unit) takes an input it does not use: ``side``, which only computes
    that input, is dead. FSDP2's Function on the unit's inputs fills zeros for it in
    backward, so under FSDP2 ``side`` gets zeros: not a gradient of the model's."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(4, 4)
        self.side = nn.Linear(4, 4)
        self.block = _TakesTwo()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.main(x), self.side(x))


class _TakesTwo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.lin(a)


class DdpIgnores(nn.Module):
    """Parameters DDP is told to ignore (``_set_params_and_buffers_to_ignore_for_model``), as
    DDP matches the names: ``f"{module_name}.{param_name}"``, a root parameter as ``.name``.

    ``aux`` is unused and ignored; ``extra`` is unused and not ignored unless
    ``extra_ignored``; the tied ``embed``/``head`` weight is ignored under its first name
    only, so DDP registers it under the second, later; the root's own ``scale``
    is unused and named ``scale``, which DDP does not match (``.scale`` would be).
    """

    def __init__(self, extra_ignored: bool = False, root_ignored: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4, bias=False)
        self.aux = nn.Linear(4, 4)
        self.mid = nn.Linear(4, 4)
        self.extra = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4, bias=False)
        self.head.weight = self.embed.weight
        self.scale = nn.Parameter(torch.ones(4))
        ignored = ["aux.weight", "aux.bias", "embed.weight", "scale"]
        if extra_ignored:
            ignored += ["extra.weight", "extra.bias"]
        if root_ignored:
            ignored.append(".scale")
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ignored)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.embed(x)))


class ExternalUse(nn.Module):
    """The root reads ``lin.weight`` itself, without calling ``lin``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.linear(x, self.lin.weight))


class OpaqueLeaf(nn.Module):
    """An LSTM is a leaf whose parameter use FX cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out)


class Ordered(nn.Module):
    """Runs ``a`` and ``b`` in either order."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, swap: bool = False) -> torch.Tensor:
        x = self.c(x)
        return self.a(self.b(x)) if swap else self.b(self.a(x))


class WithAttention(nn.Module):
    """nn.MultiheadAttention reads its ``out_proj`` weights without calling ``out_proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out)


class Lazy(nn.Module):
    """A lazy module: its parameters exist only after a first forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.LazyLinear(4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class TwoHeads(nn.Module):
    """Two outputs from one body: a loss on one head leaves the other without gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.policy = nn.Linear(4, 2)
        self.value = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.policy(h), self.value(h)


class LoraLinear(nn.Module):
    """peft's LoRA layer, in short: it reads ``lora_A.weight.dtype`` before calling ``lora_A``."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.lora_A = nn.Linear(4, 2, bias=False)
        self.lora_B = nn.Linear(2, 4, bias=False)
        self.base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        x = x.to(self.lora_A.weight.dtype)
        scaling = 4.0 / self.lora_A.weight.shape[0]  # alpha / r
        return result + self.lora_B(self.lora_A(x)) * scaling


class Distill(nn.Module):
    """A trainable teacher run under ``torch.no_grad()``: it gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Linear(16, 4)
        self.teacher = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(x)
        return (self.student(x) - target).pow(2).mean()


@dataclass(frozen=True)
class DistillOutput:
    """A plain dataclass of outputs, of the kind torch's pytree does not take apart."""

    loss: torch.Tensor
    students: int = 1


class DistillToDataclass(Distill):
    """:class:`Distill`, its loss returned in a frozen dataclass."""

    def forward(self, x: torch.Tensor) -> DistillOutput:  # type: ignore[override]
        return DistillOutput(super().forward(x))


def raising_inputs() -> object:
    """An inputs factory that fails."""
    raise KeyError("no batch")


def text_inputs() -> object:
    """An inputs factory that returns something that is not arguments."""
    return "x"


@dataclass
class Outputs:
    """A forward's result in a dataclass, as many training codebases return it."""

    loss: torch.Tensor
    extras: dict[str, list[torch.Tensor]]
    note: str = "not a tensor"


class Heads(NamedTuple):
    main: torch.Tensor
    aux: torch.Tensor


class StructuredOutputs(nn.Module):
    """Returns tensors inside a dataclass, a dict, a list and a named tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.main = nn.Linear(4, 2)
        self.aux = nn.Linear(4, 2)
        self.probe = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> Outputs:
        h = self.body(x)
        heads = Heads(self.main(h), self.aux(h))
        return Outputs(heads.main.sum(), {"nested": [self.probe(h)], "heads": list(heads)})


class TaggedParameter(nn.Parameter):
    """A user's own parameter class, which forward checks for."""


class SlottedParameter(nn.Parameter):
    """A parameter class with __slots__: it cannot take another class's layout."""

    __slots__ = ("tag",)


class CountingParameter(nn.Parameter):
    """A parameter class with its own __torch_function__ (it counts the ops it sees)."""

    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        CountingParameter.calls += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class Marked(torch.Tensor):
    """A tensor subclass used as a parameter's data (as DTensor is under FSDP2)."""


class OwnParameterClasses(nn.Module):
    """Each parameter of a user's class; forward branches on isinstance."""

    def __init__(self) -> None:
        super().__init__()
        self.tagged = TaggedParameter(torch.ones(4))
        self.slotted = SlottedParameter(torch.ones(4))
        self.counting = CountingParameter(torch.ones(4))
        self.marked = nn.Parameter(torch.ones(4).as_subclass(Marked))
        self.spare = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.tagged if isinstance(self.tagged, TaggedParameter) else x * self.spare
        y = y + self.slotted + self.counting
        return y * self.marked


class GradModes(nn.Module):
    """Parameters used only with grad disabled: no_grad, inference_mode, set_grad_enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = nn.Linear(4, 4)
        self.in_no_grad = nn.Parameter(torch.ones(4))
        self.in_inference = nn.Parameter(torch.ones(4))
        self.in_disabled = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.kept(x)
        with torch.no_grad():
            a = x * self.in_no_grad
        with torch.inference_mode():
            b = x * self.in_inference
        with torch.set_grad_enabled(False):
            c = x * self.in_disabled
        return y + a + b.clone() + c


class SwitchesOff(nn.Module):
    """forward switches gradients off: requires_grad_(False) after a use, detach_() before one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(4))
        self.b = nn.Parameter(torch.ones(4))
        self.c = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.a * self.b
        self.b.requires_grad_(False)
        self.c.detach_()
        return y * self.c


class _ScaledMatmul(torch.autograd.Function):
    """A custom op with its own backward, as fused kernels are written."""

    @staticmethod
    def forward(ctx, x, w, scale):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x, w)
        ctx.scale = scale
        return (x @ w.t()) * scale

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        x, w = ctx.saved_tensors
        return (grad @ w) * ctx.scale, (grad.t() @ x) * ctx.scale, None


class _StraightThrough(torch.autograd.Function):
    """Rounds in forward; backward passes the gradient to ``x`` only (None for ``step``)."""

    @staticmethod
    def forward(ctx, x, step):  # type: ignore[no-untyped-def, override]
        return torch.round(x / step) * step

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return grad, None


class CustomFunctions(nn.Module):
    """Parameters that reach the output only through custom autograd Functions.

    Their forward runs under no_grad, so the ops FX records there carry no
    gradient; the Functions' own backward gives ``pre`` and ``w`` theirs, and
    reaches ``step``'s accumulator with None (DDP counts it ready). ``closure``
    is read inside a forward, not passed in: no gradient. ``late`` goes
    through a Function called under no_grad: no gradient either.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(4, 4))
        self.step = nn.Parameter(torch.tensor(0.5))
        self.closure = nn.Parameter(torch.ones(4))
        self.late = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _ScaledMatmul.apply(self.pre(x), self.w, 2.0)
        q = _StraightThrough.apply(h, self.step)
        with torch.no_grad():
            skipped = _ScaledMatmul.apply(x, self.late, 1.0)
        return q + _Closure.apply(x, self) + skipped


class _Closure(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, module):  # type: ignore[no-untyped-def, override]
        return x * module.closure

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return grad, None


class _Reversible(torch.autograd.Function):
    """Reversible layers' shape (Reformer's, RevNet's): forward runs the blocks it is handed
    and keeps no activations; backward runs them again, with grad, and backpropagates through
    them itself, giving their parameters gradients they were never passed as arguments."""

    @staticmethod
    def forward(ctx, x, blocks):  # type: ignore[no-untyped-def, override]
        ctx.blocks = blocks
        ctx.save_for_backward(x)
        for block in blocks:
            x = x + block(x)
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            h = out = x.detach().requires_grad_(True)
            for block in ctx.blocks:
                out = out + block(out)
        torch.autograd.backward(out, grad)
        return h.grad, None


class UnseenBackwards(nn.Module):
    """Custom Functions handed modules, not parameters, with inputs that need grad: ``blocks``
    get gradients from the reversible Function's own backward, ``closure`` none from
    ``_Closure``'s. Only a real backward tells them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.closure = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return _Reversible.apply(h, self.blocks) + _Closure.apply(h, self)


class _Listed(torch.autograd.Function):
    """Scales by the first of a list of tensors and adds a keyword one: autograd takes ``bias``
    (an argument) for an input, but not what the list holds."""

    @staticmethod
    def forward(ctx, x, scales, bias=None):  # type: ignore[no-untyped-def, override]
        return x * scales[0] + bias

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return grad, None, grad


class ListedToFunction(nn.Module):
    """Parameters handed to a custom Function inside a list, and as a keyword (its one argument
    that needs grad): ``scale`` gets no gradient (autograd never sees it, and the backward
    returns None for the list), while ``bias`` gets one."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre(_Listed.apply(x, [self.scale], bias=self.bias))


@torch.jit.script
def _scripted_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ w)


class TorchScripted(nn.Module):
    """A TorchScript module and a TorchScript function, whose code reads parameters in C++:
    every parameter gets a gradient, though no Python op shows ``inner``'s or ``w`` read."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.inner = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
        self.w = nn.Parameter(torch.randn(4, 4))
        self.post = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(_scripted_product(self.inner(self.pre(x)), self.w))


class Differentiates(nn.Module):
    """A physics-informed net: forward returns du/dx, taken with ``create_graph``. A bias added
    at the end drops out of the derivative: ``net.2.bias`` and ``shift`` get no gradient,
    though forward reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        self.shift = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        u = self.net(x) + self.shift
        (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        return du


class DataAttribute(nn.Module):
    """``.data`` reads a parameter's values without its history: no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = nn.Linear(4, 4)
        self.through_data = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kept(x) + x @ self.through_data.weight.data + self.through_data.bias.data


class IndicesOnly(nn.Module):
    """Parameters reaching the output only through the indices of topk, sort or max(dim).

    Indices carry no gradient: ``router``, ``order`` and ``picker`` get none.
    ``values`` reaches it through max's values, and ``pairwise`` through an
    elementwise ``torch.max`` indexed as a pair would be (its row 1): both
    get gradients.
    """

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(4, 4)
        self.order = nn.Parameter(torch.randn(4))
        self.picker = nn.Parameter(torch.randn(4, 4))
        self.experts = nn.Parameter(torch.randn(4, 4))
        self.values = nn.Parameter(torch.randn(4, 4))
        self.pairwise = nn.Parameter(torch.randn(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = torch.topk(self.router(x), 2).indices
        _, order = torch.sort(self.order)
        picked = self.picker.max(dim=-1)[1]
        y = self.experts[top].sum(1) + x[:, order] + x[:, picked]
        return y + self.values.max(0).values + torch.max(self.pairwise, self.pairwise * 2)[1]


class SampledAndGrouped(nn.Module):
    """Indices drawn (``multinomial``) or grouped (``unique``'s inverse and counts): no gradient.

    ``sampler`` and ``grouped`` get none, ``kept`` one. Values decide the
    indices, so meta cannot run it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sampler = nn.Parameter(torch.zeros(4))
        self.grouped = nn.Parameter(torch.tensor([0.0, 1.0, 1.0, 2.0]))
        self.kept = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drawn = torch.multinomial(torch.softmax(self.sampler, 0), 4, replacement=True)
        _, group, counts = torch.unique(self.grouped, return_inverse=True, return_counts=True)
        return self.kept(x[:, drawn] + x[:, group]) * counts.sum()


class BooleanResults(nn.Module):
    """Parameters used only for boolean or integer results (masks, counts): no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = nn.Linear(4, 4)
        self.close = nn.Parameter(torch.zeros(4))
        self.sign = nn.Parameter(torch.randn(4))
        self.either = nn.Parameter(torch.randn(4))
        self.counted = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.kept(x)
        mask = torch.isclose(x, self.close) | self.sign.signbit()
        mask = mask & torch.logical_or(self.either, x)
        return torch.where(mask, y, x) * torch.count_nonzero(self.counted > 0)


class WrittenInto(nn.Module):
    """Parameters written into other tensors in place.

    ``row`` is written into a tensor forward makes with constant sizes (for
    FX a constant of its own, read again where it is added): it gets a
    gradient. ``kept`` is copied into a buffer under no_grad: it does not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.row = nn.Parameter(torch.randn(4))
        self.kept = nn.Parameter(torch.randn(4))
        self.register_buffer("copy", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.zeros(2, 4)
        rows[0] = self.row
        with torch.no_grad():
            self.copy.copy_(self.kept)
        return self.lin(x) + rows + self.copy


class WrittenAfterRead(nn.Module):
    """In-place writes after the last read of what they write: nothing that reaches the output.

    ``late`` is added into an activation after the output was computed from
    it, ``stored`` copied (with grad on) into a buffer after its last read:
    neither gets a gradient. ``early`` is added before the read: it does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.early = nn.Parameter(torch.randn(4))
        self.late = nn.Parameter(torch.randn(4))
        self.stored = nn.Parameter(torch.randn(4))
        self.register_buffer("state", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.add_(self.early)
        y = h * 2 + self.state
        h.add_(self.late)
        self.state.copy_(self.stored * 2)
        return y


class CheckpointedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 8)
        self.down = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class Checkpointed(nn.Module):
    """Blocks run through torch.utils.checkpoint, reentrant or not.

    With ``frozen_embedding`` and reentrant checkpointing, no input of the
    blocks needs grad, so torch never recomputes them: they get no gradient
    (PyTorch's well-known pitfall), and execorder must say so.
    """

    def __init__(self, reentrant: bool = True, frozen_embedding: bool = False) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.embed = nn.Embedding(16, 4)
        self.embed.requires_grad_(not frozen_embedding)
        self.blocks = nn.ModuleList(CheckpointedBlock() for _ in range(2))
        self.head = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        x = self.embed(ids)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(x)


def _logged(forward):  # type: ignore[no-untyped-def]
    """A decorator as transformers puts on its forwards: a (*args, **kwargs) wrapper."""
    import functools

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return forward(*args, **kwargs)

    return wrapper


class Decorated(nn.Module):
    """A forward taking **kwargs behind a functools.wraps decorator: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    @_logged
    def forward(self, x: torch.Tensor, scale: float = 2.0, **kwargs: object) -> torch.Tensor:
        return self.lin(x) * scale


class BigDataDependent(nn.Module):
    """6.4 GB of float32 at its default width, with a branch on a value: meta cannot run it."""

    def __init__(self, width: int = 40_000) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y if y.sum() > 0 else -y


class Level(nn.Module):
    """One level of a deeply nested model: a layer, then the next level inside."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.inner: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        return self.inner(x) if self.inner is not None else x


def nested(depth: int = 2000) -> nn.Module:
    """Levels nested ``depth`` deep, built without recursion."""
    top: nn.Module | None = None
    for _ in range(depth):
        level = Level()
        level.inner = top
        top = level
    assert top is not None
    return top


class HugeUnmeasurable(nn.Module):
    """Reads a value while built (so it cannot be built on meta) and asks for 200 GB."""

    def __init__(self, gigabytes: int = 200) -> None:
        super().__init__()
        one = int(torch.ones(1).sum().item())  # fails on meta: no measuring it there
        self.chunks = nn.ParameterList(
            nn.Parameter(torch.empty(250_000_000 * one)) for _ in range(gigabytes)
        )


# -- FSDP2 plans: units that run out of registration order, or break sharding --


class Unit(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


class ReadsItsInput(nn.Module):
    """Two units whose forward reads a value of its input (``.item()``), as transformers'
    padding check reads ``input_ids``: known on meta, where the inputs are real."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 0).any().item()):
            x = x + 1
        for layer in self.layers:
            x = layer(x)
        return x


class Permuted(nn.Module):
    """Four layers, run in the order 2, 0, 3, 1."""

    ORDER = (2, 0, 3, 1)

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in self.ORDER:
            x = self.layers[i](x)
        return x


class UnitTwice(nn.Module):
    """Layers a, b, then a again (a block shared across depth, as ALBERT does)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.layers
        return a(b(a(x)))


class ReadsAnotherUnit(nn.Module):
    """The root reads layer 0's weight after layer 1 ran, without calling layer 0."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return F.linear(x, self.layers[0].lin.weight)


class SharedAcrossUnits(nn.Module):
    """Two layers sharing one weight: each a unit, so the weight is in two."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(2))
        self.layers[1].lin.weight = self.layers[0].lin.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SkipsLayer(nn.Module):
    """Three layers; the last runs only when ``deep`` (ranks that disagree hang in FSDP2)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(3))

    def forward(self, x: torch.Tensor, deep: bool = True) -> torch.Tensor:
        for layer in self.layers[:2]:
            x = layer(x)
        if deep:
            x = self.layers[2](x)
        return x


# -- across ranks: forwards that part when ranks draw or see different data ------


class LayerDrop(nn.Module):
    """Four layers, each skipped at random in training, as LayerDrop does (per rank's generator)."""

    def __init__(self, width: int = 4, p: float = 0.5) -> None:
        super().__init__()
        self.p = p
        self.layers = nn.ModuleList(Unit(width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if torch.rand(()) >= self.p:
                x = layer(x)
        return x


class PythonLayerDrop(nn.Module):
    """LayerDrop drawn from Python's ``random``, as transformers 4 drew it (wav2vec2, BART)."""

    def __init__(self, width: int = 4, layerdrop: float = 0.5) -> None:
        super().__init__()
        self.layerdrop = layerdrop
        self.layers = nn.ModuleList(Unit(width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            dropout_probability = random.uniform(0, 1)
            if self.training and dropout_probability < self.layerdrop:
                continue
            x = layer(x)
        return x


class OwnRandomLayerDrop(nn.Module):
    """LayerDrop drawn from a ``random.Random`` of the model's own, seeded when built: with
    seed 5 its first four draws keep every layer, and its second four skip two."""

    def __init__(self, width: int = 4, layerdrop: float = 0.5, seed: int = 5) -> None:
        super().__init__()
        self.layerdrop = layerdrop
        self.rng = random.Random(seed)
        self.layers = nn.ModuleList(Unit(width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.training and self.rng.uniform(0, 1) < self.layerdrop:
                continue
            x = layer(x)
        return x


class DropSchedule:
    """Which layers a step keeps, drawn from a ``random.Random`` of its own."""

    def __init__(self, layerdrop: float, seed: int) -> None:
        self.layerdrop, self.rng = layerdrop, random.Random(seed)

    def keeps(self) -> bool:
        return self.rng.uniform(0, 1) >= self.layerdrop


class HelperRandomLayerDrop(nn.Module):
    """:class:`OwnRandomLayerDrop`, its generator held by a helper object: no module holds
    it. The same draws: the first four keep every layer, the second four skip two."""

    def __init__(self, width: int = 4, layerdrop: float = 0.5, seed: int = 5) -> None:
        super().__init__()
        self.schedule = DropSchedule(layerdrop, seed)
        self.layers = nn.ModuleList(Unit(width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if not self.training or self.schedule.keeps():
                x = layer(x)
        return x


class WithDropout(nn.Module):
    """Random dropout, which decides values but never which modules run."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(2))
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.drop(layer(x))
        return x


class OptionalImage(nn.Module):
    """A text model with an image branch, taken only for a batch that has images."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.text = Unit(width)
        self.vision = Unit(width)
        self.head = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.text(x)
        if pixels is not None:
            x = x + self.vision(pixels)
        return self.head(x)


def image_on_rank_0(rank: int = 0, world_size: int = 1) -> object:
    """Rank 0's batch has images; the others' have none."""
    x = torch.randn(2, 4)
    return {"x": x, "pixels": torch.randn(2, 4)} if rank == 0 else {"x": x}


class EarlyExit(nn.Module):
    """Four layers; a short sequence exits after two."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Unit(width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if i == 2 and x.shape[1] < 8:
                break
            x = layer(x)
        return x


def lengths_by_rank(rank: int = 0, world_size: int = 1) -> object:
    """Rank r's sequence has 4 + 4r tokens: rank 0's is short."""
    return (torch.randn(1, 4 + 4 * rank, 4),)


class MlpBlocks(nn.Module):
    """Three MLP blocks in a ModuleList: units of a plan, with activations worth measuring."""

    def __init__(self, width: int = 256, hidden: int = 1024) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
            for _ in range(3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def train_two_steps(
    model: nn.Module,
    args: tuple[Any, ...],
    step: torch.optim.Optimizer,
    after: Callable[[], None] | None = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Two real training steps: forward, backward of the summed outputs, the optimizer's step
    (``after`` each: a tracker's reset). What execorder's memory measure runs, for real."""
    for _ in range(2):
        out = model(*args, **(kwargs or {}))
        losses = [
            t.float().sum()
            for t in tree_leaves(out)
            if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
        ]
        torch.stack(losses).sum().backward()
        del out, losses
        step.step()
        step.zero_grad(set_to_none=True)
        if after is not None:
            after()


def allocator_peak(held: Iterable[torch.Tensor], run: Callable[[], None]) -> int:
    """The CPU allocator's peak while ``run`` runs, as ``torch.profiler`` records it, with
    the storages of ``held`` (made before it) counted throughout."""
    from torch.profiler import ProfilerActivity, profile

    before = sum(t.untyped_storage().nbytes() for t in held)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        run()
    events = profiled.profiler.kineto_results.events()  # type: ignore[union-attr]
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    alive = peak = 0
    for _, change in changes:
        alive += change
        peak = max(peak, alive)
    return before + peak


class _SortedIndices(torch.autograd.Function):
    """Sorts; the indices are marked non-differentiable, as ``torch.sort``'s are."""

    @staticmethod
    def forward(ctx, scores):  # type: ignore[no-untyped-def, override]
        values, indices = scores.sort(dim=-1)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad, _):  # type: ignore[no-untyped-def, override]
        return grad


class _Positive(torch.autograd.Function):
    """A float mask of the positive entries, marked non-differentiable."""

    @staticmethod
    def forward(ctx, scores):  # type: ignore[no-untyped-def, override]
        mask = (scores > 0).to(scores.dtype)
        ctx.mark_non_differentiable(mask)
        return mask

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return None


class NonDifferentiableOutputs(nn.Module):
    """Custom Functions whose forward marks outputs non-differentiable (``ctx``).

    ``router`` and ``masker`` reach the output only through such outputs: no
    gradient. ``scorer`` reaches it through the sorted values as well: a
    gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(4, 4)
        self.masker = nn.Linear(4, 4)
        self.scorer = nn.Linear(4, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        _, order = _SortedIndices.apply(self.router(x))
        values, _ = _SortedIndices.apply(self.scorer(x))
        return h.gather(-1, order) * _Positive.apply(self.masker(x)) + values


class _ScaleInPlace(torch.autograd.Function):
    """Scales its input in place (``ctx.mark_dirty``), as fused in-place kernels do."""

    @staticmethod
    def forward(ctx, x, w):  # type: ignore[no-untyped-def, override]
        ctx.mark_dirty(x)
        ctx.save_for_backward(x.detach().clone(), w)
        x.mul_(w)
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        x, w = ctx.saved_tensors
        return grad * w, (grad * x).sum(0)


class WrittenByFunction(nn.Module):
    """A custom Function writes its input in place; forward reads the input after it.

    The Function's backward gives ``scale`` and ``proj`` gradients, though
    forward never reads what it returns: the written input's history is the
    Function's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        _ScaleInPlace.apply(h, self.scale)
        return h


class ReadForShapeOnly(nn.Module):
    """Parameters read only for their shape, dtype or device, or compared whole.

    ``x.view_as(w)``, ``x.type_as(w)``, ``x.to(w)``, ``torch.result_type`` and
    ``is_floating_point`` give ``w`` no gradient: ``shape``, ``cast``,
    ``device`` and ``same`` get none; ``proj`` gets its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.shape = nn.Parameter(torch.randn(2, 4))
        self.cast = nn.Parameter(torch.randn(4))
        self.device = nn.Parameter(torch.randn(4))
        self.same = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x).view_as(self.shape).type_as(self.cast).to(self.device)
        return h * (torch.result_type(self.same, x) == x.dtype) * self.same.is_floating_point()


class AdaptiveHead(nn.Module):
    """``nn.AdaptiveLogSoftmaxWithLoss`` runs a tail cluster only for the targets in it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.AdaptiveLogSoftmaxWithLoss(8, 12, [4, 8], div_value=2.0)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x), target).loss


class ReadThroughParameters(nn.Module):
    """Forward reads parameters from ``self.parameters()``, as DDP's well-known fix does.

    ``head`` never runs, but ``0 * sum(p.sum() ...)`` over its parameters
    gives each a gradient (of zeros): DDP is satisfied. FX never sees these
    parameters as proxies: the sum runs for real while it traces.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + 0 * sum(p.sum() for p in self.head.parameters())


class PoolingIndices(nn.Module):
    """Parameters that reach the output only through a pooling's indices or LU's pivots.

    ``F.max_pool1d(..., return_indices=True)``, ``nn.MaxPool1d(return_indices=True)``
    and ``torch.linalg.lu_factor`` return integer indices beside their values:
    ``pooled``, ``pooled_by_module`` and ``pivoted`` get no gradient; ``kept``
    reaches the output through the pooled values.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pooled = nn.Linear(4, 4)
        self.pooled_by_module = nn.Linear(4, 4)
        self.pool = nn.MaxPool1d(2, return_indices=True)
        self.pivoted = nn.Parameter(torch.randn(4, 4) + 4 * torch.eye(4))
        self.kept = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, where = F.max_pool1d(self.pooled(x).unsqueeze(1), 2, return_indices=True)
        _, also = self.pool(self.pooled_by_module(x).unsqueeze(1))
        _, pivots = torch.linalg.lu_factor(self.pivoted)
        values, _ = F.max_pool1d(self.kept(x).unsqueeze(1), 2, return_indices=True)
        indices = (where + also).squeeze(1).float() + pivots[:2].float()
        return values.squeeze(1).repeat(1, 2) + indices.repeat(1, 2)


class CheckpointReused(nn.Module):
    """One block's parameters in more than one reentrant checkpoint's backward.

    ``twice``: the block runs in two checkpoints (a layer shared across depth,
    as ALBERT's, under gradient checkpointing); ``after``: in one, and again
    after it, outside. A reentrant checkpoint runs a backward of its own, so
    the block's gradient arrives in two passes: DDP raises ("Expected to mark
    a variable ready only once").
    """

    def __init__(self, where: str = "twice") -> None:
        super().__init__()
        self.where = where
        self.embed = nn.Linear(4, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        h = checkpoint(self.block, self.embed(x), use_reentrant=True)
        h = (
            checkpoint(self.block, h, use_reentrant=True)
            if self.where == "twice"
            else self.block(h)
        )
        return self.head(h)


class CheckpointReusedFirst(nn.Module):
    """A block run outside, then inside a reentrant checkpoint with every other parameter.

    The checkpoint's own backward gives every parameter its gradient, so DDP
    all-reduces them all and ends the step there; the block's other part
    arrives after, unreduced: its gradients differ across ranks, silently.
    """

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def _rest(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self._rest, self.block(x), use_reentrant=True)


class Prediction:
    """A model's own output class: neither a tuple, a mapping nor a dataclass."""

    def __init__(self, logits: torch.Tensor, confidence: torch.Tensor) -> None:
        self.logits = logits
        self.confidence = confidence


class OwnOutputClass(nn.Module):
    """Forward returns a ``Prediction``: both its tensors carry gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.confidence = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> Prediction:
        h = self.body(x)
        return Prediction(h, self.confidence(h))


class HookedLeaf(nn.Module):
    """Forward hooks on a leaf (``nn.Linear``) that use other modules' parameters.

    A LoRA added by a forward hook (``lora_a``, ``lora_b``), an input scale
    by a pre-hook with keyword arguments (``gate``), and a logging hook that
    reads a value (it cannot run on traced values, and changes nothing).
    """

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.lora_a = nn.Linear(4, 2, bias=False)
        self.lora_b = nn.Linear(2, 4, bias=False)
        self.gate = nn.Parameter(torch.ones(4))
        self.norms: list[float] = []
        self.base.register_forward_pre_hook(self._scale, with_kwargs=True)
        self.base.register_forward_hook(self._lora)
        self.base.register_forward_hook(self._log)

    def _scale(self, module, args, kwargs):  # type: ignore[no-untyped-def]
        return (args[0] * self.gate,), kwargs

    def _lora(self, module, args, output):  # type: ignore[no-untyped-def]
        return output + self.lora_b(self.lora_a(args[0]))

    def _log(self, module, args, output):  # type: ignore[no-untyped-def]
        self.norms.append(float(output.detach().norm()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


class HookedRoot(nn.Module):
    """The model's own forward hooks, registered on itself: a pre-hook scales the input
    (``scale``), a hook adds a side branch (``side``); ``spare`` only a hook that is
    removed again reads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.side = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))
        self.register_forward_pre_hook(lambda module, args: (args[0] * self.scale,))
        self.register_forward_hook(self._side, with_kwargs=True)
        self.register_forward_hook(lambda module, args, output: self.spare(output)).remove()

    def _side(self, module, args, kwargs, output):  # type: ignore[no-untyped-def]
        return output + self.side(args[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CheckpointingEncoder(nn.Module):
    """Runs one layer twice, each time under a reentrant checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for _ in range(2):
            h = checkpoint(self.layer, h, use_reentrant=True)
        return h


class CheckpointLoop(nn.Module):
    """A shared layer checkpointed twice inside an encoder module.

    Sharded as its own FSDP2 unit, ``encoder.layer``'s last backward is a
    recompute: FSDP2 leaves its gradient unreduced. Sharded as part of
    ``encoder``, which runs once around both checkpoints, it is right.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.encoder = CheckpointingEncoder()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)))


class _RecomputingCheckpoint(torch.autograd.Function):
    """Activation checkpointing as Megatron-LM writes it: a Function of torch's shape.

    Runs ``run_function`` under no_grad in forward, keeps it on ``ctx``, and runs
    it again with grad in backward, then backward through the recomputed graph.
    """

    @staticmethod
    def forward(ctx, run_function, *args):  # type: ignore[no-untyped-def, override]
        ctx.run_function = run_function
        with torch.no_grad():
            outputs = run_function(*args)
        ctx.save_for_backward(*args)
        return outputs

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[no-untyped-def, override]
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            outputs = ctx.run_function(*inputs)
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        torch.autograd.backward(outputs, grads)
        return (None, *(t.grad for t in inputs))


class OwnCheckpointing(nn.Module):
    """Blocks checkpointed by a Function of the model's own, as Megatron-LM's are.

    Every parameter gets a gradient, from the recompute; ``frozen_input``
    feeds a block an input that needs no grad, so torch never runs that
    Function's backward: ``cold`` gets none.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.up = nn.Linear(4, 8)
        self.down = nn.Linear(8, 4)
        self.cold = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def _block(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _RecomputingCheckpoint.apply(self._block, self.embed(x))
        cold = _RecomputingCheckpoint.apply(self.cold, x)
        return self.head(h + cold)


class _PartlyFrozenBlock(nn.Module):
    """``frozen`` runs under the block's own ``no_grad``; ``a`` reaches the output through a
    custom Function."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            g = self.frozen(h)
        return self.b(_StraightThrough.apply(self.a(h), 0.5) + g)


class OwnCheckpointPartlyFrozen(nn.Module):
    """Blocks checkpointed by a Function of the model's own, each running one layer under
    its own ``no_grad`` and one through a custom Function: the recompute, with grad on,
    gives ``a`` and ``b`` a gradient and ``frozen`` none. The first block is handed to the
    Function as a module, the second as a function.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.first = _PartlyFrozenBlock()
        self.second = _PartlyFrozenBlock()

    checkpoint: type[torch.autograd.Function] = _RecomputingCheckpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.checkpoint.apply(self.first, self.embed(x))
        return self.checkpoint.apply(lambda y: self.second(y), h)


class _RngCheckpoint(_RecomputingCheckpoint):
    """Megatron-LM's and DeepSpeed's checkpoint as they keep random state: forward saves
    ``ctx.fwd_cpu_rng_state``, and backward recomputes under it (then restores its own)."""

    @staticmethod
    def forward(ctx, run_function, *args):  # type: ignore[no-untyped-def, override]
        ctx.fwd_cpu_rng_state = torch.get_rng_state()
        return _RecomputingCheckpoint.forward(ctx, run_function, *args)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[no-untyped-def, override]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.fwd_cpu_rng_state)
            return _RecomputingCheckpoint.backward(ctx, *grads)


class RandomRouteCheckpointed(nn.Module):
    """A block that routes each call to one of eight experts at random, checkpointed by a
    Function that replays forward's random state in its recompute: the experts the
    forward picked, and only those, get gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(8))

    def _route(self, h: torch.Tensor) -> torch.Tensor:
        return self.experts[int(torch.randint(0, 8, ()))](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for _ in range(2):
            h = _RngCheckpoint.apply(self._route, h)
        return h


class OwnCheckpointReused(nn.Module):
    """One block checkpointed twice by a Function of the model's own: its gradient comes in
    two backward passes, the last a recompute's."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _RecomputingCheckpoint.apply(self.block, self.embed(x))
        return self.head(_RecomputingCheckpoint.apply(self.block, h))


class _SetupContextCheckpoint(_RecomputingCheckpoint):
    """The same checkpoint written the newer way: ``forward`` takes no ``ctx``, and
    ``setup_context`` keeps the ``run_function``."""

    @staticmethod
    def forward(run_function, *args):  # type: ignore[no-untyped-def, override]
        with torch.no_grad():
            return run_function(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def, override]
        ctx.run_function = inputs[0]
        ctx.save_for_backward(*inputs[1:])


class OwnCheckpointSetupContextPartlyFrozen(OwnCheckpointPartlyFrozen):
    """:class:`OwnCheckpointPartlyFrozen` with the checkpoint that keeps its ``run_function``
    in ``setup_context``: ``forward`` has no ``ctx`` to tell which argument it keeps."""

    checkpoint = _SetupContextCheckpoint


class OwnCheckpointSetupContext(nn.Module):
    """A checkpoint Function that keeps its ``run_function`` in ``setup_context``, run on
    ``block`` twice (its gradient comes in two backward passes) and nested in itself;
    ``up`` is read inside the outer block only, and gets its gradient from the recompute."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.block = nn.Linear(4, 4)
        self.up = nn.Linear(4, 4)
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def _outer(self, h: torch.Tensor) -> torch.Tensor:
        return _SetupContextCheckpoint.apply(self.inner, self.block(torch.relu(self.up(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _SetupContextCheckpoint.apply(self.block, self.embed(x))
        return self.head(_SetupContextCheckpoint.apply(self._outer, h))


class OwnCheckpointingNested(nn.Module):
    """A Megatron-style checkpoint around torch's reentrant one, and a module read on
    both sides of it: ``embed`` gets its gradient in two backward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def _block(self, h: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return self.embed(checkpoint(self.inner, h, use_reentrant=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_RecomputingCheckpoint.apply(self._block, self.embed(x)))


class PassesNone(torch.autograd.Function):
    """The sum of two tensors whose backward passes no gradient to the second (a model's
    own Function may): autograd runs the accumulators behind it all the same, with none."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.set_materialize_grads(False)
        return a + b

    @staticmethod
    def backward(ctx: Any, grad: Any) -> tuple[Any, None]:
        return grad, None


class PassesNoneModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PassesNone.apply(self.a(x), self.b(x))


class FrozenBaseAdapter(nn.Module):
    """LoRA's recipe on a frozen model: a trainable adapter inside reentrant-checkpointed
    blocks whose input, the frozen embedding's output, needs no grad; a trainable side branch
    whose result is dropped; a trainable head."""

    def __init__(self, reentrant: bool = True, input_grads: bool = False) -> None:
        super().__init__()
        self.reentrant, self.input_grads = reentrant, input_grads
        self.embed = nn.Embedding(16, 4).requires_grad_(False)
        self.base = nn.ModuleList(nn.Linear(4, 4).requires_grad_(False) for _ in range(2))
        self.adapter = nn.ModuleList(nn.Linear(4, 4, bias=False) for _ in range(2))
        self.side = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.base[i](x) + self.adapter[i](x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        x = self.embed(ids)
        if self.input_grads:  # what enable_input_require_grads() does
            x.requires_grad_(True)
        self.side(x)
        for i in range(2):
            x = checkpoint(self._block, i, x, use_reentrant=self.reentrant)
        return self.head(x)


class CacheBlock(nn.Module):
    """Adds what it cached on the last chunk, and caches its own output, in the list it is
    passed (as the Wan VAE's causal convolutions keep their cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4) / 2)

    def forward(self, x: torch.Tensor, cache: list[Any], i: int) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if cache[i] is not None:
            y = y + cache[i]
        cache[i] = y
        return y


class WritesCache(nn.Module):
    """Three chunks (the input, scaled) through two blocks, each block's cache in a list the
    model passes it: once the first block has cached a tensor that needs grad, FSDP2 passes
    a unit a copy of the list, so a block sharded alone writes its cache into the copy."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CacheBlock() for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache: list[Any] = [None, None]
        out = []
        for scale in (1.0, 2.0, 3.0):  # three chunks, as a video's frames come
            chunk = x * scale
            for i, block in enumerate(self.blocks):
                chunk = block(chunk, cache, i)
            out.append(chunk)
        return torch.cat(out)
