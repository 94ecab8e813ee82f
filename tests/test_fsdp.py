"""FSDP2 plans: units, prefetch lists and checks, from the recorded order (no processes).

What the plans do under real FSDP2 is tested in tests/test_fsdp_real.py.
"""

from __future__ import annotations

import itertools
import json

import models
import pytest
import torch
from conftest import Later, needs
from encdec import EncoderDecoder
from moe import MoE
from seed import Model
from typer.testing import CliRunner

import execorder.fsdp
from execorder.analysis.sharding import (
    DTYPE_BYTES,
    BackwardSource,
    CheckKind,
    FsdpPlan,
    UnitChoice,
    UnitRule,
    prefetch_lists,
)
from execorder.cli import app
from execorder.errors import PlanMismatchError, SchemaError, UnitError
from execorder.report import Report, Severity

hf = Later("hf")
pytestmark = needs("transformers", "transformers is not installed (pip install execorder[hf])")
IDS = "int64[1,16]@0:128"


def kinds(plan: FsdpPlan) -> list[CheckKind]:
    return [c.kind for c in plan.checks]


# -- units ------------------------------------------------------------------------


def test_no_split_modules_are_named_as_whose_they_are() -> None:
    """A model's own ``_no_split_modules`` are not transformers'; diffusers' are diffusers'."""

    class Own(models.Permuted):
        _no_split_modules = ("Unit",)

    plan = execorder.fsdp.plan(Own, input_size=(2, 4))
    assert plan.unit_rule.choice is UnitChoice.NO_SPLIT
    assert plan.unit_rule.describe() == "the model's _no_split_modules (Unit)"
    diffusers = pytest.importorskip("diffusers")
    flux = diffusers.FluxTransformer2DModel(
        in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    )  # fmt: skip
    inputs = {
        "hidden_states": torch.randn(1, 16, 4),
        "encoder_hidden_states": torch.randn(1, 8, 32),
        "pooled_projections": torch.randn(1, 32),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
    }
    assert execorder.fsdp.plan(flux, inputs=inputs).unit_rule.describe() == (
        "diffusers' _no_split_modules (FluxTransformerBlock, FluxSingleTransformerBlock)"
    )


@pytest.mark.transformers
def test_a_llama_gets_its_decoder_layers_as_units_from_no_split_modules() -> None:
    plan = execorder.fsdp.plan(hf.tiny_llama(layers=3), input_size=IDS)
    assert [u.name for u in plan.units] == ["", *(f"model.layers.{i}" for i in range(3))]
    assert [u.type for u in plan.units[1:]] == ["LlamaDecoderLayer"] * 3
    assert plan.unit_rule == UnitRule(UnitChoice.NO_SPLIT, ("LlamaDecoderLayer",))
    assert plan.unit_rule.describe() == "transformers' _no_split_modules (LlamaDecoderLayer)"
    root = plan.unit("")
    # The root holds the rest: the embedding (tied to lm_head: one parameter) and the norm.
    assert root.param_names == ("model.embed_tokens.weight", "model.norm.weight")
    assert dict(plan.forward_prefetch) == {
        "": ("model.layers.0",),
        "model.layers.0": ("model.layers.1",),
        "model.layers.1": ("model.layers.2",),
        "model.layers.2": (),
    }
    assert dict(plan.backward_prefetch) == {
        "": ("model.layers.2",),
        "model.layers.2": ("model.layers.1",),
        "model.layers.1": ("model.layers.0",),
        "model.layers.0": (),
    }
    assert plan.checks == ()  # a Llama runs its layers in registration order


@pytest.mark.transformers
def test_units_carry_what_they_gather_in_the_models_real_dtypes() -> None:
    model = hf.tiny_llama(layers=2).to(torch.bfloat16)
    plan = execorder.fsdp.plan(model, input_size=IDS)
    layer = plan.unit("model.layers.0")
    params = dict(model.model.layers[0].named_parameters())
    assert layer.params == len(params)
    assert layer.numel == sum(p.numel() for p in params.values())
    assert layer.bytes == sum(p.numel() * p.element_size() for p in params.values())
    assert dict(layer.bytes_by_dtype) == {"bfloat16": layer.bytes}
    assert sum(u.params for u in plan.units) == len(list(model.parameters()))


@pytest.mark.transformers
def test_gpt2_gets_its_blocks_and_a_plain_model_its_repeated_block_class() -> None:
    gpt2 = execorder.fsdp.plan(hf.tiny_gpt2(layers=2), input_size=IDS)
    assert [u.name for u in gpt2.units[1:]] == ["transformer.h.0", "transformer.h.1"]
    plain = execorder.fsdp.plan(EncoderDecoder, input_size="int64[2,16]@0:100")
    assert plain.unit_rule == UnitRule(UnitChoice.REPEATED, ("Block",))
    assert {u.name for u in plain.units} == {"", "encoder.0", "encoder.1", "decoder.0", "decoder.1"}


def test_units_by_class_or_qualified_name_and_a_clear_error_for_neither() -> None:
    by_name = execorder.fsdp.plan(models.Permuted, input_size=(2, 4), units=["layers.3"])
    assert [u.name for u in by_name.units] == ["", "layers.3"]
    assert by_name.unit("").params == 6  # the root holds the three other layers
    by_class = execorder.fsdp.plan(EncoderDecoder, input_size="int64[2,16]@0:100", units=["Linear"])
    assert "head" in {u.name for u in by_class.units}
    with pytest.raises(UnitError) as caught:
        execorder.fsdp.plan(models.Permuted, input_size=(2, 4), units=["Layer"])
    assert caught.value.name == "Layer"
    assert caught.value.classes == ("Unit",)
    assert "units=['Layer']" in str(caught.value)


def test_a_model_without_repeated_blocks_is_one_unit_and_says_so() -> None:
    plan = execorder.fsdp.plan(models.LoraLinear, input_size=(2, 4))
    assert [u.name for u in plan.units] == [""]
    assert kinds(plan) == [CheckKind.ROOT_ONLY]
    assert plan.failing([Severity.WARNING]) == ()


# -- prefetch lists -----------------------------------------------------------------


def test_forward_lists_follow_execution_order_not_registration_order() -> None:
    plan = execorder.fsdp.plan(models.Permuted, input_size=(2, 4))
    order = [f"layers.{i}" for i in models.Permuted.ORDER]
    assert [u.name for u in plan.units] == ["", *order]
    assert [u.first_call for u in plan.units] == sorted(u.first_call for u in plan.units)
    assert dict(plan.forward_prefetch) == {
        "": (order[0],),
        **{a: (b,) for a, b in itertools.pairwise(order)},
        order[-1]: (),
    }
    # No recorded backward: reverse post-forward order.
    assert plan.backward_from is BackwardSource.REVERSE
    assert plan.backward_prefetch[order[-1]] == (order[-2],)


def test_more_prefetch_names_more_units() -> None:
    plan = execorder.fsdp.plan(models.Permuted, input_size=(2, 4), prefetch=2)
    assert plan.forward_prefetch[""] == ("layers.2", "layers.0")
    assert plan.forward_prefetch["layers.3"] == ("layers.1",)
    with pytest.raises(ValueError, match="prefetch must be 1 or more"):
        execorder.fsdp.plan(models.Permuted, input_size=(2, 4), prefetch=0)


def test_a_unit_that_runs_again_keeps_only_targets_that_come_next_after_each_call() -> None:
    plan = execorder.fsdp.plan(models.UnitTwice, input_size=(2, 4))
    # a, b, a: after a's second call nothing runs, so a lists nothing.
    assert plan.forward_prefetch == {"": ("layers.0",), "layers.0": (), "layers.1": ("layers.0",)}
    assert plan.unit("layers.0").calls == 2
    assert CheckKind.REPEATED in kinds(plan)


def test_prefetch_lists_skip_units_already_running() -> None:
    sequence = [
        ("", frozenset()),
        ("outer", frozenset({""})),
        ("outer.inner", frozenset({"", "outer"})),
        ("next", frozenset({""})),
    ]
    assert prefetch_lists(sequence, 1) == {
        "": ("outer",),
        "outer": ("outer.inner",),
        "outer.inner": ("next",),
        "next": (),
    }


def test_backward_lists_follow_a_recorded_backward() -> None:
    class Parallel(torch.nn.Module):
        """Two branches summed: backward reaches the second branch first."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(models.Unit() for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            left = self.layers[0](x)
            right = self.layers[2](self.layers[1](x))
            return left * 2 + right

    plan = execorder.fsdp.plan(Parallel(), inputs=torch.randn(2, 4), backward=True)
    assert plan.backward_from is BackwardSource.RECORDED
    # The order autograd really ran the branches in, from the recorded gradients.
    recorded = execorder.profile(Parallel(), inputs=torch.randn(2, 4), backward=True).report
    first = [n.rpartition(".lin")[0] for n in recorded.backward]
    order = list(dict.fromkeys(first))
    assert plan.backward_prefetch[""] == (order[0],)
    assert plan.backward_prefetch[order[0]] == (order[1],)


# -- checks -------------------------------------------------------------------------


def test_an_external_use_is_an_error_naming_the_unit_and_parameter() -> None:
    plan = execorder.fsdp.plan(models.ReadsAnotherUnit, input_size=(2, 4), units=["Unit"])
    (check,) = plan.checks
    assert check.kind is CheckKind.EXTERNAL_USE and check.severity is Severity.ERROR
    assert check.units == ("layers.0", "")
    assert check.params == ("layers.0.lin.weight",)


def test_the_blocks_layout_leaves_a_block_read_from_outside_to_the_unit_around_it() -> None:
    """The root reads layer 0's weight after the layers ran (as DiT's root embeds the label
    with its first block's embedder): sharded alone, layer 0 would be read as a shard."""
    plan = execorder.fsdp.plan(models.ReadsAnotherUnit, input_size=(2, 4))
    assert [u.name for u in plan.units] == ["", "layers.1"] and plan.checks == ()
    assert plan.unit_rule.left_out == plan.unit_rule.read_outside == ("layers.0",)
    assert str(plan.unit_rule) == (
        "the repeated block class (Unit), but not layers.0: a call outside it reads its "
        "parameters, so the unit around it holds it (FSDP2 gathers a unit's parameters for its "
        "own forward only)"
    )
    written = plan.to_dict()
    assert written["units_left_out"] == written["units_read_outside"] == ["layers.0"]
    read = FsdpPlan.from_dict(json.loads(json.dumps(written)))
    assert read.unit_rule.read_outside == ("layers.0",) and read.to_dict() == written


def test_a_unit_that_writes_into_an_argument_holding_a_tensor_needing_grad_is_an_error() -> None:
    """FSDP2 passes a unit a copy of such a list (tests/test_fsdp_grads.py: the gradients go
    wrong); the blocks layout leaves such blocks to the unit around them."""
    x = torch.randn(2, 4)
    named = execorder.fsdp.plan(models.WritesCache, inputs=x, units=["CacheBlock"])
    # blocks.0's first call writes into a list of Nones, which FSDP2 passes as it is; from
    # then on the list holds a tensor needing grad (blocks.1's first call already)
    assert [(c.kind, c.units, c.calls) for c in named.checks if c.severity is Severity.ERROR] == [
        (CheckKind.INPUT_WRITE, ("blocks.1",), 3),
        (CheckKind.INPUT_WRITE, ("blocks.0",), 2),
    ]
    assert "writes into a list, dict or dataclass it is passed" in named.checks[0].message
    report = execorder.profile(models.WritesCache, inputs=x).report
    assert [report.modules[i].name for i in report.input_writes] == ["blocks.1"] + [
        "blocks.0",
        "blocks.1",
    ] * 2
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    traced = execorder.fsdp.plan(models.WritesCache, units=["CacheBlock"])  # FX sees it too
    assert [c for c in traced.checks if c.kind is CheckKind.INPUT_WRITE] == [
        c for c in named.checks if c.kind is CheckKind.INPUT_WRITE
    ]
    default = execorder.fsdp.plan(models.WritesCache, inputs=x)
    assert [u.name for u in default.units] == [""]
    assert default.unit_rule.writes_inputs == ("blocks.0", "blocks.1")
    assert str(default.unit_rule).endswith(
        "but not blocks.0, blocks.1: they write into a list, dict or dataclass they are passed "
        "that holds a tensor needing grad, so the units around them hold them (FSDP2 passes a "
        "unit a copy of such an argument)"
    )
    written = default.to_dict()
    assert written["units_writing_inputs"] == ["blocks.0", "blocks.1"]
    assert FsdpPlan.from_dict(json.loads(json.dumps(written))).to_dict() == written


def test_metadata_reads_are_not_uses_of_another_unit() -> None:
    # LoRA reads lora_A.weight.dtype and .shape before calling lora_A.
    plan = execorder.fsdp.plan(models.LoraLinear, input_size=(2, 4), units=["lora_A"])
    assert CheckKind.EXTERNAL_USE not in kinds(plan)


@pytest.mark.transformers
def test_real_peft_lora_with_every_linear_a_unit_has_no_external_use() -> None:
    peft = pytest.importorskip("peft", reason="peft is part of the dev install")
    model = peft.get_peft_model(
        hf.tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    plan = execorder.fsdp.plan(model, input_size=IDS, units=["Linear"])
    assert any(u.name.endswith("lora_A.default") for u in plan.units)
    assert CheckKind.EXTERNAL_USE not in kinds(plan)


@pytest.mark.transformers
def test_a_parameter_in_two_units_is_an_error_and_tied_weights_in_one_are_not() -> None:
    plan = execorder.fsdp.plan(models.SharedAcrossUnits, input_size=(2, 4), units=["Unit"])
    assert kinds(plan) == [CheckKind.SHARED]
    assert plan.checks[0].units == ("layers.0", "layers.1")
    tied = execorder.fsdp.plan(hf.tiny_llama(tie=True), input_size=IDS)
    assert CheckKind.SHARED not in kinds(tied)


def test_the_blocks_layout_leaves_blocks_that_share_a_parameter_to_the_unit_around_them() -> None:
    """Its own choice: two blocks sharing a weight, and BERT's embedding, tied to the head the
    root holds (transformers' _no_split_modules names BertEmbeddings); the other blocks stay."""
    shared = execorder.fsdp.plan(models.SharedAcrossUnits, input_size=(2, 4))
    assert [u.name for u in shared.units] == [""] and kinds(shared) == [CheckKind.ROOT_ONLY]
    assert shared.unit_rule.left_out == ("layers.0", "layers.1")
    assert shared.to_dict()["units_left_out"] == ["layers.0", "layers.1"]
    assert "but not layers.0, layers.1: they share parameters" in str(shared.unit_rule)
    bert = execorder.fsdp.plan(hf.tiny_bert_lm, input_size=IDS)
    assert [u.name for u in bert.units] == ["", "bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert bert.unit_rule.left_out == ("bert.embeddings",) and not bert.checks
    assert "units_left_out" not in execorder.fsdp.plan(hf.tiny_llama, input_size=IDS).to_dict()


def test_a_unit_that_never_runs_is_warned_and_left_out_of_every_list() -> None:
    plan = execorder.fsdp.plan(models.SkipsLayer, input_size=(2, 4), concrete_args={"deep": False})
    # Registration order would have layers.1 prefetch it: gathered for nothing.
    assert kinds(plan) == [CheckKind.NOT_RUN, CheckKind.REGISTRATION_ORDER]
    assert plan.checks[1].units == ("layers.1", "layers.2")
    assert plan.units[-1].name == "layers.2" and plan.units[-1].first_call is None
    listed = {
        t
        for lists in (plan.forward_prefetch, plan.backward_prefetch)
        for v in lists.values()
        for t in v
    }
    assert "layers.2" not in listed and "layers.2" not in plan.forward_prefetch


def test_a_sweep_finds_units_that_run_for_some_values_only() -> None:
    plan = execorder.fsdp.plan(
        models.SkipsLayer, input_size=(2, 4), sweep=[("deep", [True, False])]
    )
    assert kinds(plan) == [CheckKind.VARIES]
    assert plan.checks[0].units == ("layers.2",)
    assert plan.combinations == ({"deep": True}, {"deep": False})
    assert plan.failing([Severity.ERROR]) == plan.checks


def test_a_sweep_finds_units_that_run_in_another_order() -> None:
    plan = execorder.fsdp.plan(
        models.Ordered, concrete_args={}, sweep=[("swap", [False, True])], units=["Linear"]
    )
    assert CheckKind.ORDER_VARIES in kinds(plan)


def test_registration_order_mistargets_are_named() -> None:
    plan = execorder.fsdp.plan(EncoderDecoder, input_size="int64[2,16]@0:100")
    found = {c.units for c in plan.checks if c.kind is CheckKind.REGISTRATION_ORDER}
    # decoder.1 (registered before the encoder) would prefetch encoder.0, which already ran.
    assert ("decoder.1", "encoder.0") in found
    assert all(c.severity is Severity.WARNING for c in plan.checks)


def test_a_plan_on_a_meta_routing_assumption_says_so() -> None:
    plan = execorder.fsdp.plan(MoE, init_kwargs={"dim": 16, "n_experts": 8}, input_size=(4, 16))
    assert [u.name for u in plan.units[1:]] == [f"experts.{i}" for i in range(8)]
    (check,) = [c for c in plan.checks if c.kind is CheckKind.ASSUMPTION]
    assert check.severity is Severity.WARNING and check.assumed == (("aten.nonzero", ""),)
    assert "aten.nonzero in (root)" in check.message


def test_the_seed_model_under_fx() -> None:
    plan = execorder.fsdp.plan(Model, concrete_args={"run_all_layers": True})
    assert plan.mode == "fx"
    assert plan.unit("layer0").calls == 2


# -- records, apply, command line -------------------------------------------------------


def test_every_torch_dtype_has_its_size() -> None:
    dtypes = [d for d in vars(torch).values() if isinstance(d, torch.dtype)]
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        assert DTYPE_BYTES.get(name) == dtype.itemsize, name


def test_a_plan_reads_back_from_its_json() -> None:
    plan = execorder.fsdp.plan(
        models.SkipsLayer, input_size=(2, 4), sweep=[("deep", [True, False])]
    )
    again = FsdpPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    # The JSON holds the checks' words, not their facts: what reads back
    # writes the same JSON, and says the same.
    assert again.to_dict() == plan.to_dict()
    assert [c.message for c in again.checks] == [c.message for c in plan.checks]
    assert (again.units, again.forward_prefetch, again.backward_prefetch) == (
        plan.units,
        plan.forward_prefetch,
        plan.backward_prefetch,
    )
    assert [(c.kind, c.units) for c in again.checks] == [(c.kind, c.units) for c in plan.checks]
    with pytest.raises(SchemaError, match="not an FSDP plan"):
        FsdpPlan.from_dict({"kind": "report"})
    broken = {**plan.to_dict(), "forward_prefetch": {"": "layers.0"}}
    with pytest.raises(SchemaError, match="forward_prefetch"):
        FsdpPlan.from_dict(broken)


def test_apply_refuses_a_plan_that_does_not_fit_and_sets_nothing() -> None:
    plan = execorder.fsdp.plan(models.Permuted, input_size=(2, 4))
    with pytest.raises(PlanMismatchError) as caught:
        execorder.fsdp.apply(models.Permuted(), plan)  # nothing sharded
    assert "layers.2 is not sharded" in str(caught.value)
    with pytest.raises(PlanMismatchError) as caught:
        execorder.fsdp.apply(models.UnitTwice(), plan.to_dict())
    assert "it has no module 'layers.2'" in str(caught.value)
    linears = torch.nn.Module()
    linears.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(4))
    with pytest.raises(
        PlanMismatchError, match=r"layers\.2 is a Linear, the plan's unit is a Unit"
    ):
        execorder.fsdp.shard(linears, plan)


def test_the_command_prints_json_and_gates_on_severity(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "plan.json"
    args = ["fsdp", "tests/models.py:ReadsAnotherUnit", "--input", "[2,4]", "-u", "Unit", "-f"]
    args.append("json")
    result = CliRunner().invoke(app, [*args, "-o", str(out), "--fail-on", "error"])
    assert result.exit_code == 1, result.output
    assert "check failed: external-use (error): layers.0, (root)" in result.stderr
    data = json.loads(out.read_text())
    assert {"units", "forward_prefetch", "backward_prefetch", "checks"} <= set(data)
    assert data["units"][0]["name"] == ""
    assert data["checks"][0]["kind"] == "external-use"
    ok = CliRunner().invoke(
        app, ["fsdp", "tests/models.py:Permuted", "--input", "[2,4]", "--fail-on", "error"]
    )
    assert ok.exit_code == 0, ok.output
    assert "registration-order" in ok.stdout
    warned = CliRunner().invoke(
        app, ["fsdp", "tests/models.py:Permuted", "--input", "[2,4]", "--fail-on", "warning"]
    )
    assert warned.exit_code == 1


def test_the_command_refuses_unknown_gates_and_units() -> None:
    bad = CliRunner().invoke(app, ["fsdp", "tests/models.py:Permuted", "--fail-on", "fatal"])
    assert bad.exit_code == 2 and "--fail-on got 'fatal'" in bad.stderr
    unit = CliRunner().invoke(
        app, ["fsdp", "tests/models.py:Permuted", "--input", "[2,4]", "--unit", "Nope"]
    )
    assert unit.exit_code == 2
    assert "--unit Nope: no module of the model has that class" in unit.stderr
