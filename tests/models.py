"""Edge-case models for the tests. Models users see live in sample_models/."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return x


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
