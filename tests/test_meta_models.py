"""Transformers' own architectures on meta, checked against a real backward on CPU.

A representative dozen of what ``benchmarks/bench_meta.py`` surveys over every
model type: each read values that used to force a CPU rebuild (padding and
mask checks, index lists, ``unique_consecutive``, a legacy constructor,
fused mixture-of-experts kernels, routing). Built small (two layers, narrow),
so a real CPU forward and backward is the truth: the parameters whose
``.grad`` stays None must be exactly those execorder says get no gradient,
or differ only where the report says it assumed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import needs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_meta

import execorder
from execorder.errors import MetaDeviceError
from execorder.profiling import NoteKind

pytestmark = [
    pytest.mark.transformers,
    needs("transformers", "transformers is not installed (pip install execorder[hf])"),
]

# (task, model type, class, what a plain forward on meta did before)
CASES = [
    ("causal", "llama", "LlamaForCausalLM", "ran"),
    ("seq2seq", "bart", "BartForConditionalGeneration", "Tensor.item() on a padding check"),
    ("seqcls", "mt5", "MT5ForSequenceClassification", "unique_consecutive has no meta kernel"),
    ("seqcls", "gpt2", "GPT2ForSequenceClassification", "ran"),
    ("causal", "big_bird", "BigBirdForCausalLM", "Tensor.item() of an index list"),
    ("masked", "deberta-v2", "DebertaV2ForMaskedLM", "Tensor.item()"),
    ("causal", "xlnet", "XLNetLMHeadModel", "legacy constructor: parameters on CPU"),
    ("causal", "mixtral", "MixtralForCausalLM", "grouped_mm wants bfloat16 on meta"),
    ("causal", "qwen3_moe", "Qwen3MoeForCausalLM", "grouped_mm wants bfloat16 on meta"),
    ("seq2seq", "switch_transformers", "SwitchTransformersForConditionalGeneration", "nonzero"),
    ("image", "vit", "ViTForImageClassification", "ran"),
]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


@pytest.mark.parametrize(("task", "kind", "name", "before"), CASES, ids=[c[1] for c in CASES])
def test_on_meta_as_a_real_backward_says(task: str, kind: str, name: str, before: str) -> None:
    cls, config = bench_meta._build(task, kind, name, small=True)
    result = bench_meta._profile(cls, config, task, None)  # the default policy: meta first
    assert result.device == "meta" and result.notes == (), result.notes
    report = result.report
    truth = bench_meta._truth(cls, config, task)
    said = {p.name for p in report.no_grad()}
    resting = {p.name for p in report.on_assumption}
    assert (said ^ truth) <= resting, (sorted(said - truth), sorted(truth - said))
    if report.assumptions:
        assert kind == "switch_transformers"  # its experts are picked by its router
        assert resting and all(".mlp." in n for n in resting)
    else:
        assert said == truth


def test_a_checkpointed_llama_stays_on_meta_through_its_recomputation() -> None:
    """transformers' own gradient checkpointing (non-reentrant): backward recomputes each
    layer's attention, which on meta must take the kernel forward took."""
    cls, config = bench_meta._build("causal", "llama", "LlamaForCausalLM", small=True)

    def build() -> Any:
        model = cls(config)
        model.gradient_checkpointing_enable({"use_reentrant": False})
        return model.train()

    batch = bench_meta.inputs("causal", config)
    result = execorder.profile(build, inputs=lambda: batch, backward=True)
    assert result.device == "meta" and result.notes == (), result.notes
    torch.manual_seed(0)
    model = build()
    model(**batch).logits.sum().backward()
    truth = {n for n, p in model.named_parameters() if p.grad is None}
    assert {p.name for p in result.report.no_grad()} == truth


def test_a_model_that_reads_its_routing_runs_on_cpu_and_says_which_op() -> None:
    """JetMoE sizes its expert groups with .tolist() of the router's counts."""
    cls, config = bench_meta._build("causal", "jetmoe", "JetMoeForCausalLM", small=True)
    result = bench_meta._profile(cls, config, "causal", None)
    (note,) = result.notes
    assert note.kind is NoteKind.RERAN_ON_CPU and result.device == "cpu"
    assert note.reason.startswith("reading values computed from parameters (Tensor.tolist)")
    assert "modeling_jetmoe.py:" in note.reason
    with pytest.raises(MetaDeviceError):
        bench_meta._profile(cls, config, "causal", "meta")
