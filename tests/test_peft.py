"""Real LoRA models from peft: what execorder says about them is what training sees."""

from __future__ import annotations

import pytest
import torch
from conftest import Later, needs

import execorder

pytestmark = [
    pytest.mark.transformers,
    needs("peft", "peft is part of the dev install (requirements-dev.txt)"),
    needs("transformers", "needs transformers (the [hf] extra)"),
]
peft = Later("peft")
hf = Later("hf")


def _lora_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    return peft.get_peft_model(hf.tiny_llama(), config)


def test_lora_layers_read_metadata_without_external_uses() -> None:
    report = execorder.profile(_lora_llama(), input_size="input_ids=int64[1,16]@0:128").report
    assert report.external == ()
    adapters = [p for p in report.params if "lora_" in p.name]
    assert len(adapters) == 8 and all(p.requires_grad and not p.dead for p in adapters)
    assert report.summary.params_no_grad == 0


def test_the_prediction_equals_a_real_backward() -> None:
    model = _lora_llama()
    ids = torch.randint(0, 128, (1, 16))
    report = execorder.profile(model, inputs={"input_ids": ids}, mode="eager").report
    model(input_ids=ids).logits.sum().backward()
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert {p.name for p in report.no_grad()} == no_grad == set()


def _reached_in_a_real_backward(model: torch.nn.Module, ids: torch.Tensor) -> set[str]:
    """Trainable parameters whose gradient accumulators run (DDP's view), as names."""
    reached: set[str] = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(lambda _, name=name: reached.add(name))
    model(input_ids=ids).logits.sum().backward()
    return reached


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("input_grads", [True, False], ids=["input-grads", "no-input-grads"])
def test_lora_with_gradient_checkpointing(reentrant: bool, input_grads: bool) -> None:
    """transformers' gradient_checkpointing_enable under LoRA, against a real backward.

    Reentrant checkpointing runs each layer under no_grad in forward: only a
    recompute shows the adapters inside get gradients (peft makes the inputs
    need grad itself, so they do). The pitfall where they get none is in
    tests/cases.py (Checkpointed with a frozen embedding).
    """

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        base = hf.tiny_llama()
        kwargs = {"use_reentrant": reentrant}
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if input_grads:
            base.enable_input_require_grads()
        model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj"]))
        model.train()
        return model

    ids = torch.randint(0, 128, (1, 16))
    report = execorder.profile(build(), inputs={"input_ids": ids}).report
    trainable = {p.name for p in report.all_params() if p.requires_grad}
    reached = _reached_in_a_real_backward(build(), ids)
    assert {p.name for p in report.no_grad()} == trainable - reached
    assert sum("lora_" in p.name for p in report.params) == 4
    recorded = build()
    with execorder.record(recorded) as recording:
        recorded(input_ids=ids).logits.sum().backward()
    assert {p.name for p in recording.report().no_grad()} == trainable - reached
