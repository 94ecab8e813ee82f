"""Real third-party models: tiny transformers models, built from configs, traced eagerly."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import Later, needs
from moe import MoE

import execorder
from execorder import eager
from execorder.errors import TraceFailure
from execorder.report import Mode, Report

pytestmark = [
    pytest.mark.transformers,
    needs("transformers", "transformers is not installed (pip install execorder[hf])"),
]
hf = Later("hf")


def _ids(device: str) -> torch.Tensor:
    if device == "meta":
        return torch.empty(1, 8, dtype=torch.long, device="meta")
    return torch.randint(0, hf.VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))


def _run(build, device: str) -> execorder.Report:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    with torch.device(device):
        model = build()
    return eager.trace(model, kwargs={"input_ids": _ids(device)})


@pytest.mark.parametrize("build", ["tiny_llama", "tiny_gpt2", "tiny_bert", "tiny_mixtral"])
def test_torch_fx_cannot_trace_them(build: str) -> None:
    with pytest.raises(TraceFailure):
        execorder.trace(getattr(hf, build)())


def test_llama_calls_and_tied_head() -> None:
    report = _run(hf.tiny_llama, "meta")
    calls = Counter(c.type for c in report.modules)
    assert calls["LlamaDecoderLayer"] == 2
    assert calls["LlamaAttention"] == 2
    assert calls["LlamaMLP"] == 2
    assert calls["LlamaRMSNorm"] == 5  # two a layer and the final norm
    assert calls["Linear"] == 2 * (4 + 3) + 1  # q, k, v, o; gate, up, down; lm_head
    head = report.param("lm_head.weight")
    assert head.name == "model.embed_tokens.weight"
    assert head.aliases == ("lm_head.weight",)
    assert report.unused == () and report.dead == ()


def test_llama_reports_agree_on_meta_and_cpu() -> None:
    on_meta = _run(hf.tiny_llama, "meta").to_dict()
    on_cpu = _run(hf.tiny_llama, "cpu").to_dict()
    assert on_meta["modules"] == on_cpu["modules"]
    assert on_meta["params"] == on_cpu["params"]


def test_untied_llama_has_its_own_head() -> None:
    report = _run(lambda: hf.tiny_llama(tie=False), "meta")
    assert report.param("lm_head.weight").aliases == ()
    assert report.summary.params_total == 1 + 2 * 9 + 1 + 1


def test_gpt2_ties_lm_head_to_wte() -> None:
    report = _run(hf.tiny_gpt2, "meta")
    assert report.param("lm_head.weight").name == "transformer.wte.weight"
    calls = Counter(c.type for c in report.modules)
    assert calls["GPT2Block"] == 2 and calls["Embedding"] == 2
    assert report.no_grad() == ()


def test_bert_uses_every_parameter_including_the_pooler() -> None:
    report = _run(hf.tiny_bert, "meta")
    assert Counter(c.type for c in report.modules)["BertLayer"] == 2
    assert report.param("pooler.dense.weight").used
    assert report.no_grad() == ()


def test_berts_hidden_states_alone_miss_its_pooler_as_a_real_backward_does() -> None:
    """A token-level loss on last_hidden_state leaves the pooler without a gradient."""
    reach = _run(hf.tiny_bert, "meta").output_reach
    assert reach is not None
    assert reach.outputs == ("last_hidden_state", "pooler_output")
    assert reach.main == "pooler_output"
    assert reach.misses == {"last_hidden_state": ("pooler.dense.weight", "pooler.dense.bias")}
    for output in reach.outputs:
        torch.manual_seed(0)
        model = hf.tiny_bert()
        getattr(model(input_ids=_ids("cpu")), output).sum().backward()
        missed = tuple(n for n, p in model.named_parameters() if p.grad is None)
        assert missed == reach.misses.get(output, ()), output


def test_mixtral_runs_on_meta_as_on_cpu() -> None:
    """Its experts' grouped_mm meta kernel wants bfloat16: run in it on meta, reported as is."""
    result = execorder.profile(hf.tiny_mixtral, inputs={"input_ids": _ids("cpu")}, backward=True)
    assert result.notes == () and result.device == "meta"
    report = result.report
    assert report.assumptions == ()  # the router's choice decides no shape here
    on_cpu = execorder.profile(
        hf.tiny_mixtral, inputs={"input_ids": _ids("cpu")}, backward=True, device="cpu"
    ).report
    assert report.to_dict() == on_cpu.to_dict()
    assert Counter(c.type for c in report.modules)["MixtralDecoderLayer"] == 2
    # transformers 5 fuses the experts of a layer into 3-D parameters, so every
    # one of them gets a gradient whatever the routing; so does the router.
    experts = report.param("model.layers.0.mlp.experts.gate_up_proj")
    assert experts.shape[0] == 8 and experts.dtype == "float32"  # the model's, not the run's
    assert report.no_grad() == ()
    assert not report.param("model.layers.0.mlp.gate.weight").dead


def test_experts_no_token_was_routed_to_are_unused_on_cpu_and_assumed_on_meta() -> None:
    torch.manual_seed(0)
    model = MoE(dim=16, n_experts=8)
    x = torch.randn(4, 16)
    chosen = set(model.router(x).argmax(-1).tolist())
    report = eager.trace(model, args=(x,))
    idle = {i for i in range(8) if i not in chosen}
    assert idle, "with 4 tokens and 8 experts some expert must be idle"
    assert {p.name for p in report.unused} == {
        f"experts.{i}.{layer}.{kind}" for i in idle for layer in ("up", "down")
        for kind in ("weight", "bias")
    }  # fmt: skip
    with torch.device("meta"):
        on_meta = MoE(dim=16, n_experts=8)
    assumed = eager.trace(on_meta, args=(x,))
    assert assumed.unused == () and len(assumed.assumptions) == 1
    assert {p.name for p in report.unused} <= {p.name for p in assumed.on_assumption}
    with pytest.raises(eager.MetaDeviceError, match=r"aten.nonzero selects by values"):
        eager.trace(on_meta, args=(x,), assume=False)


def test_fx_on_a_transformers_model_says_what_it_cannot_trace() -> None:
    from typer.testing import CliRunner

    from execorder.cli import app

    result = CliRunner().invoke(app, ["trace", "hf:tiny_llama", "--mode", "fx"])
    assert result.exit_code == 2
    assert "forward is wrapped by a decorator" in result.stderr
    assert "co_varnames" not in result.stderr


def test_a_model_given_no_inputs_runs_on_its_own_example_inputs() -> None:
    """transformers' dummy_inputs, as if given: the same report, which says where they came from."""
    from execorder.report import InputSource

    model = hf.tiny_llama()
    own = execorder.profile(hf.tiny_llama).report
    given = execorder.profile(hf.tiny_llama, inputs=dict(model.dummy_inputs)).report
    assert own.mode is Mode.EAGER
    assert dict(own.inputs_made) == {"input_ids": InputSource.EXAMPLE}
    assert not given.inputs_made
    assert own.modules == given.modules and own.params == given.params
    again = Report.from_dict(json.loads(json.dumps(own.to_dict())))
    assert again.inputs_made == own.inputs_made


def test_fsdp_and_trace_say_the_inputs_were_the_models_own() -> None:
    from typer.testing import CliRunner

    from execorder.cli import app

    for command in ("trace", "fsdp"):
        result = CliRunner().invoke(app, [command, "hf:tiny_bert", "-f", "json"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["inputs_made"] == {"input_ids": "example-inputs"}
        table = CliRunner().invoke(app, [command, "hf:tiny_bert"], env={"COLUMNS": "200"})
        assert "input_ids: the model's own example inputs (its dummy_inputs)" in table.stdout
