"""Real LoRA models from peft: what execorder says about them is what training sees."""

from __future__ import annotations

import pytest
import torch

import execorder

peft = pytest.importorskip("peft", reason="peft is part of the dev install (requirements-dev.txt)")
hf = pytest.importorskip("hf", reason="needs transformers (the [hf] extra)")


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
