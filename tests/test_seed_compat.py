"""The seed test of PyTorch's ``_ExecOrderTracer``, unchanged, against the drop-in."""

from __future__ import annotations

import torch
from seed import Model

from execorder import ExecOrderTracer


def test_symbolic_tracing_outputs() -> None:
    """The assertions of test/distributed/fsdp/test_fsdp_fx.py, verbatim."""
    model = Model()
    tracer = torch.fx.Tracer()
    orig_call_module = tracer.call_module
    orig_create_proxy = tracer.create_proxy
    exec_order_tracer = ExecOrderTracer()
    with exec_order_tracer.patch_tracer(tracer=tracer, root_module=model):
        concrete_args = {"run_all_layers": True}
        tracer.trace(model, concrete_args)
    # Check that the tracer methods are unchanged after exiting the context
    assert orig_call_module == tracer.call_module
    assert orig_create_proxy == tracer.create_proxy
    # Check `module_forward_order`
    correct_module_forward_order = [
        model,
        model.layer0,
        model.relu,
        model.layer2,
        model.layer2[0],
        model.layer2[1],
        model.layer2[2],
        model.relu,
        model.layer1,
        model.relu,
        model.layer0,
        model.relu,
    ]
    exec_info = exec_order_tracer.exec_info
    assert exec_info is not None
    assert exec_info.module_forward_order == correct_module_forward_order
    # Check `module_to_param_usage_infos`
    assert exec_info.module_to_param_usage_infos[model] == [
        (model.layer0, list(model.layer0.named_parameters())),
        (model.layer2, list(model.layer2.named_parameters())),
        (model, [("weight1", model.weight1)]),
        (model.layer1, list(model.layer1.named_parameters())),
        (model, [("weight2", model.weight2)]),
        (model.layer0, list(model.layer0.named_parameters())),
    ]
    assert exec_info.module_to_param_usage_infos[model.layer0] == [
        (model.layer0, list(model.layer0.named_parameters()))
    ]
    assert exec_info.module_to_param_usage_infos[model.layer1] == [
        (model.layer1, list(model.layer1.named_parameters()))
    ]
    assert exec_info.module_to_param_usage_infos[model.layer2] == [
        (model.layer2[0], list(model.layer2[0].named_parameters())),
        (model.layer2[2], list(model.layer2[2].named_parameters())),
    ]
    assert exec_info.module_to_param_usage_infos[model.relu] == []
    # Check `param_forward_order`
    correct_param_order = [
        model.layer0.weight,
        model.layer0.bias,
        model.layer2[0].weight,
        model.layer2[2].weight,
        model.weight1,
        model.layer1.weight,
        model.weight2,
    ]
    assert exec_info.param_forward_order == correct_param_order
    # Check `visited_params`
    assert len(exec_info.visited_params) == len(exec_info.param_forward_order)
    assert exec_info.visited_params == set(exec_info.param_forward_order)
