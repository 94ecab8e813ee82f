"""FSDP2 plans the way frameworks write them: groups, layouts, reshard flags, bytes (no processes).

Real FSDP2 holds these to what it does in tests/test_fsdp_real.py, and
torchtitan's own layout in tests/test_titan.py; here, the rules and their
errors.
"""

from __future__ import annotations

import json

import models
import pytest
import torch
from conftest import Later, needs
from encdec import EncoderDecoder
from torch import nn
from typer.testing import CliRunner

import execorder.fsdp
from execorder.analysis.sharding import FsdpPlan, LayoutChoice, ReshardPolicy, UnitChoice
from execorder.cli import app
from execorder.errors import LayoutError, LayoutUnitsError, UnitError
from execorder.output.perfetto import timeline
from execorder.output.terminal import draw, plain_text
from execorder.output.views import fsdp_view, tree_view

hf = Later("hf")
pytestmark = needs("transformers", "transformers is not installed (pip install execorder[hf])")
IDS = "int64[1,16]@0:128"
ENCDEC = {"input_size": "int64[2,16]@0:100"}


def test_names_joined_by_plus_are_one_unit_started_by_its_first_module() -> None:
    plan = execorder.fsdp.plan(EncoderDecoder, units=["encoder.1+decoder.0", "Block"], **ENCDEC)
    group = plan.unit("encoder.1+decoder.0")
    assert group.modules == ("encoder.1", "decoder.0") and group.grouped
    assert group.type == "Block+Block" and group.calls == 1
    assert group.params == 12 and group.bytes == 2 * plan.unit("encoder.0").bytes
    # encoder.1 runs first: the group starts there, and decoder.1 comes after both its modules.
    order = [u.name for u in plan.units]
    assert order == ["", "encoder.0", "encoder.1+decoder.0", "decoder.1"]
    assert plan.forward_prefetch["encoder.0"] == ("encoder.1+decoder.0",)
    assert plan.forward_prefetch["encoder.1+decoder.0"] == ("decoder.1",)


def test_a_group_names_each_of_its_modules_once_and_a_module_is_in_one_unit() -> None:
    with pytest.raises(UnitError, match="Block matches 4 modules"):
        execorder.fsdp.plan(EncoderDecoder, units=["Block+head"], **ENCDEC)
    with pytest.raises(UnitError, match="nope: no module"):
        execorder.fsdp.plan(EncoderDecoder, units=["encoder.0+nope"], **ENCDEC)
    with pytest.raises(UnitError, match=r"encoder\.0 is already in unit encoder\.0\+decoder\.0"):
        execorder.fsdp.plan(EncoderDecoder, units=["encoder.0", "encoder.0+decoder.0"], **ENCDEC)


@pytest.mark.transformers
def test_the_torchtitan_layout_of_a_transformers_llama() -> None:
    untied = execorder.fsdp.plan(
        lambda: hf.tiny_llama(layers=2, tie=False), input_size=IDS, layout="torchtitan"
    )
    assert [u.modules for u in untied.units] == [
        ("",),
        ("model.embed_tokens",),
        ("model.layers.0",),
        ("model.layers.1",),
        ("model.norm", "lm_head"),
    ]
    assert untied.unit_rule.choice is UnitChoice.TORCHTITAN
    assert [u.reshard_after_forward for u in untied.units] == [False, True, True, True, False]
    tied = execorder.fsdp.plan(hf.tiny_llama, input_size=IDS, layout="torchtitan")
    assert tied.units[1].modules == ("model.embed_tokens", "model.norm", "lm_head")
    assert not tied.checks or all(c.kind.value != "shared-params" for c in tied.checks)


def test_the_final_norm_is_not_the_embeddings() -> None:
    """BART's decoders register ``layernorm_embedding``, which runs first, after their blocks:
    it is not the final norm; mBART's ``layer_norm`` is, and BART has none."""
    from transformers import MBartConfig, MBartForCausalLM

    sizes = {"d_model": 32, "decoder_ffn_dim": 64, "encoder_ffn_dim": 64, "vocab_size": 128}
    heads = {"decoder_attention_heads": 4, "encoder_attention_heads": 4}
    config = MBartConfig(**sizes, **heads, decoder_layers=2, max_position_embeddings=64)
    plan = execorder.fsdp.plan(
        lambda: MBartForCausalLM(config), input_size=IDS, layout="torchtitan"
    )
    grouped = [u.name for u in plan.units if u.grouped]
    assert grouped == ["model.decoder.embed_tokens+model.decoder.layer_norm+lm_head"], grouped


def test_the_accelerate_layout_of_transformers_models() -> None:
    """accelerate's FSDP2 preparation: _no_split_modules blocks alone, the embedding, and the
    base model's last norm with the head, kept gathered (the embedding too when tied)."""
    untied = execorder.fsdp.plan(
        lambda: hf.tiny_llama(layers=2, tie=False), input_size=IDS, layout="accelerate"
    )
    assert [(u.name, u.reshard_after_forward) for u in untied.units if u.params] == [
        ("model.embed_tokens", True),
        ("model.layers.0", True),
        ("model.layers.1", True),
        ("model.norm+lm_head", False),
    ]
    assert untied.unit_rule.choice is UnitChoice.ACCELERATE
    assert "accelerate's FSDP2 preparation" in str(untied.unit_rule)
    tied = execorder.fsdp.plan(hf.tiny_llama, input_size=IDS, layout="accelerate")
    assert tied.unit("model.norm+model.embed_tokens+lm_head").grouped
    # No _no_split_modules, no blocks: the encoder-decoder's blocks stay in the root.
    none = execorder.fsdp.plan(EncoderDecoder, layout="accelerate", **ENCDEC)
    assert [u.name for u in none.units] == [""]
    with pytest.raises(LayoutUnitsError):
        execorder.fsdp.plan(EncoderDecoder, units=["Block"], layout="accelerate", **ENCDEC)


def test_the_torchtitan_layout_needs_a_decoder() -> None:
    with pytest.raises(LayoutError) as found:
        execorder.fsdp.plan(EncoderDecoder, layout="torchtitan", **ENCDEC)
    assert "input embedding" in str(found.value) and "output head" in str(found.value)
    assert "layout='torchtitan'" in str(found.value)


def test_reshard_policies() -> None:
    flags = {
        policy: [
            u.reshard_after_forward
            for u in execorder.fsdp.plan(
                EncoderDecoder, reshard_after_forward=policy, **ENCDEC
            ).units
        ]
        for policy in ReshardPolicy
    }
    # The root never reshards; by default, neither does the unit forward ends in.
    assert flags[ReshardPolicy.ALWAYS] == [False, True, True, True, True]
    assert flags[ReshardPolicy.NEVER] == [False] * 5
    assert flags[ReshardPolicy.DEFAULT] == [False, True, True, True, False]


def test_a_unit_run_twice_is_gathered_once_in_forward_when_kept() -> None:
    kept = execorder.fsdp.plan(models.UnitTwice, input_size=(2, 4))
    twice = kept.unit("layers.0")
    assert not twice.reshard_after_forward and twice.calls == 2
    assert (twice.gathers.forward, twice.gathers.backward) == (1, 1)
    again = execorder.fsdp.plan(models.UnitTwice, input_size=(2, 4), reshard_after_forward="always")
    assert (again.unit("layers.0").gathers.forward, again.unit("layers.0").gathers.backward) == (
        2,
        2,
    )
    repeated = [c for c in kept.checks if c.kind.value == "repeated"]
    assert repeated and "stays gathered" in repeated[0].describe()


class Odd(nn.Module):
    """Rows that do not divide by the world size: FSDP2 pads them."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(3, 5) for _ in range(2))
        self.steps = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[1](torch.relu(self.blocks[0](x)[:, :3])) + self.steps.float().sum()


def test_bytes_are_padded_to_the_world_size_and_cast_to_the_param_dtype() -> None:
    plan = execorder.fsdp.plan(
        Odd, input_size=(2, 3), world_size=4, param_dtype=torch.bfloat16, reduce_dtype="float32"
    )
    block = plan.unit("blocks.0")  # weight [5, 3], bias [5]: 2 rows a rank, 8 gathered
    assert block.shard_bytes == 2 * 3 * 4 + 2 * 4
    assert block.gather_bytes == 8 * 3 * 2 + 8 * 2
    root = plan.unit("")  # an int64 parameter is not cast: 1 row a rank
    assert root.shard_bytes == 8 and root.gather_bytes == 4 * 8
    assert (plan.world_size, plan.param_dtype, plan.reduce_dtype) == (4, "bfloat16", "float32")
    with pytest.raises(ValueError, match="world_size"):
        execorder.fsdp.plan(Odd, input_size=(2, 3), world_size=0)


def test_new_fields_read_back_and_an_older_plan_reads_as_before() -> None:
    plan = execorder.fsdp.plan(
        EncoderDecoder, units=["encoder.1+decoder.0"], world_size=2, **ENCDEC
    )
    again = FsdpPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict()
    older = plan.to_dict()
    for key in ("layout", "reshard_after_forward", "world_size", "param_dtype", "reduce_dtype"):
        del older[key]
    for unit in older["units"]:
        for key in ("modules", "reshard_after_forward", "gather_bytes", "shard_bytes", "gathers"):
            del unit[key]
    read = FsdpPlan.from_dict(older)
    assert read.reshard_after_forward is ReshardPolicy.ALWAYS and read.layout is LayoutChoice.BLOCKS
    assert all(u.reshard_after_forward and u.modules == (u.name,) for u in read.units)


def test_views_draw_a_group_as_one_unit() -> None:
    plan, report = execorder.fsdp.plan_and_report(
        execorder.Profiler(EncoderDecoder, **ENCDEC), units=["encoder.1+decoder.0"], world_size=2
    )
    table = plain_text(draw(fsdp_view(plan)), width=160)
    assert "encoder.1+decoder.0" in table and "per rank" in table
    assert "over 2 ranks" in table
    tree = plain_text(draw(tree_view(report, plan=plan)), width=160)
    assert tree.count("(encoder.1+decoder.0)") == 2  # each of its modules is marked with it
    spans = [e for e in timeline(report, plan=plan)["traceEvents"] if e.get("cat") == "fsdp unit"]
    group = [e for e in spans if "encoder.1+decoder.0" in e["name"]]
    assert len(group) == 1  # one span, from encoder.1's start to decoder.0's end
    starts = {c.name: i for i, c in enumerate(report.modules)}
    assert starts["encoder.1"] < starts["decoder.0"]


def test_the_command_takes_the_layout_options_and_refuses_a_layout_with_units() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "fsdp", "sample_models/hf.py:tiny_llama", "--input", IDS, "--layout", "torchtitan",
            "--world-size", "2", "--param-dtype", "bfloat16", "--reshard-after-forward",
            "always", "-f", "json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["layout"], data["world_size"], data["param_dtype"]) == (
        "torchtitan",
        2,
        "bfloat16",
    )
    assert data["reshard_after_forward"] == "always"
    assert data["units"][1]["modules"] == ["model.embed_tokens", "model.norm", "lm_head"]
    refused = runner.invoke(
        app,
        ["fsdp", "sample_models/encdec.py:EncoderDecoder", "--layout", "torchtitan", "-u", "Block"],
    )
    assert refused.exit_code == 2
    assert "--layout torchtitan chooses the units itself: not with --unit" in refused.stderr
    with pytest.raises(LayoutUnitsError) as in_python:  # the library's rule, before a forward
        execorder.fsdp.plan(EncoderDecoder, units=["Block"], layout="torchtitan")
    assert str(in_python.value) == (
        "layout='torchtitan' chooses the units itself: not with units=[...]"
    )
    not_decoder = runner.invoke(
        app,
        ["fsdp", "sample_models/encdec.py:EncoderDecoder", "--input", "int64[2,16]@0:100",
         "--layout", "torchtitan"],
    )  # fmt: skip
    assert not_decoder.exit_code == 2
    assert "--layout torchtitan shards a decoder" in not_decoder.stderr
    assert "(name the units with --unit instead)" in not_decoder.stderr
