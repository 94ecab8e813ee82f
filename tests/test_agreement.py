"""The drop-in agrees with PyTorch's own _ExecOrderTracer where the original is right,
and differs exactly where the original has known gaps."""

from __future__ import annotations

from typing import Any

import models
import pytest
import torch
from reuse import Reuse
from seed import Model
from tied import TiedLM
from torch import nn
from torch.distributed.fsdp._trace_utils import _ExecOrderTracer
from transformer import Transformer

import execorder
from execorder import ExecOrderTracer


def _run(cls: Any, model: nn.Module, concrete_args: dict[str, Any] | None) -> Any:
    tracer = torch.fx.Tracer()
    recorder = cls()
    with recorder.patch_tracer(tracer=tracer, root_module=model):
        tracer.trace(model, concrete_args)
    return recorder.exec_info


AGREEING = [
    pytest.param(Model, {"run_all_layers": True}, id="seed-all-layers"),
    pytest.param(Model, {"run_all_layers": False}, id="seed-some-layers"),
    pytest.param(TiedLM, None, id="tied"),
    pytest.param(Reuse, None, id="reuse"),
    pytest.param(lambda: Transformer(n_layers=3), None, id="transformer"),
    pytest.param(models.CalledTwice, None, id="called-twice"),
]


@pytest.mark.parametrize(("build", "concrete_args"), AGREEING)
def test_same_exec_info_as_pytorch(build: Any, concrete_args: dict[str, Any] | None) -> None:
    model = build()
    ours = _run(ExecOrderTracer, model, concrete_args)
    theirs = _run(_ExecOrderTracer, model, concrete_args)
    assert ours.module_forward_order == theirs.module_forward_order
    assert ours.param_forward_order == theirs.param_forward_order
    assert ours.visited_params == theirs.visited_params
    assert ours.module_to_param_usage_infos == theirs.module_to_param_usage_infos


@pytest.mark.parametrize(("build", "concrete_args"), AGREEING)
def test_report_matches_pytorch_orders(build: Any, concrete_args: dict[str, Any] | None) -> None:
    model = build()
    theirs = _run(_ExecOrderTracer, model, concrete_args)
    report = execorder.trace(model, concrete_args=concrete_args)
    names = {id(p): n for n, p in model.named_parameters()}
    modules = {id(m): n for n, m in model.named_modules()}
    assert [c.name for c in report.modules] == [modules[id(m)] for m in theirs.module_forward_order]
    assert [p.name for p in report.params] == [names[id(p)] for p in theirs.param_forward_order]


GAPS = [
    pytest.param(models.KeywordParam, ["bias"], [], id="keyword"),
    pytest.param(models.NestedParams, ["a", "b", "c"], [], id="nested"),
    pytest.param(models.LeafArgParam, ["w"], [], id="leaf-arg"),
    pytest.param(models.ReturnedParam, ["scale"], [], id="returned"),
    pytest.param(models.InputNamedLikeParam, [], ["weight"], id="input-named-like-param"),
]


@pytest.mark.parametrize(("build", "missed", "wrongly_used"), GAPS)
def test_fixes_pytorch_gaps(build: Any, missed: list[str], wrongly_used: list[str]) -> None:
    """Ours sees what the original misses, and not what it wrongly counts."""
    model = build()
    ours = _run(ExecOrderTracer, model, None)
    theirs = _run(_ExecOrderTracer, model, None)
    params = dict(model.named_parameters())
    for name in missed:
        assert params[name] in ours.visited_params
        assert params[name] not in theirs.visited_params
    for name in wrongly_used:
        assert params[name] not in ours.visited_params
        assert params[name] in theirs.visited_params
