"""torchtitan's models under execorder: on meta at their real sizes, and its FSDP layout.

The layout is checked against torchtitan itself: tests/titan_probe.py shards
its Llama3 debug model with torchtitan's own ``apply_fsdp_to_decoder`` on
two gloo ranks and reads the units FSDP2 holds; ``execorder.fsdp.plan(...,
layout="torchtitan")``, made on meta, must name exactly those units with
exactly those flags, dtypes and bytes. The meta run is checked against a
real forward on CPU (torchtitan's flex attention run eagerly, without
compiling): the same module calls in the same order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_probe

pytest.importorskip("torchtitan", reason="torchtitan is not installed (requirements-dev.txt)")

import execorder
import execorder.fsdp
from execorder.report import InputSource

HERE = Path(__file__).resolve().parent
TITAN = str(HERE.parent / "sample_models" / "titan.py")
TOKENS = "tokens=int64[1,128]@0:2048"


@pytest.fixture(scope="module")
def sharded_by_torchtitan(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("titan")
    return run_probe("titan_probe.py", tmp / "store")


@pytest.mark.processes
def test_the_torchtitan_layout_is_what_apply_fsdp_to_decoder_shards(
    sharded_by_torchtitan: list[dict],
) -> None:
    assert len(sharded_by_torchtitan) == 6
    for record in sharded_by_torchtitan:
        plan = execorder.fsdp.plan(
            f"{TITAN}:llama3",
            init_kwargs={"tied": record["tied"]},
            input_size=TOKENS,
            layout="torchtitan",
            reshard_after_forward=record["policy"],
            world_size=2,
            param_dtype="bfloat16",
            reduce_dtype="float32",
        )
        theirs = {tuple(u["modules"]): u for u in record["units"]}
        ours = {u.modules: u for u in plan.units}
        assert set(ours) == set(theirs), record["policy"]
        for modules, unit in theirs.items():
            if "reshard_after_forward" not in unit:
                assert ours[modules].params == 0  # the root holds nothing: no group
                continue
            mine = ours[modules]
            case = (record["tied"], record["policy"], modules)
            assert mine.reshard_after_forward == unit["reshard_after_forward"], case
            assert mine.shard_bytes == unit["shard_bytes"], case
            assert (plan.param_dtype, plan.reduce_dtype) == (
                unit["param_dtype"],
                unit["reduce_dtype"],
            )


@pytest.mark.processes
def test_a_step_parallelized_by_torchtitan_reports_what_the_plain_model_does(
    tmp_path: Path,
) -> None:
    """record() inside a step of torchtitan's Llama3 and DeepSeek-V3 (a mixture of experts)
    under torchtitan's own tensor parallelism (each of its SPMD backends), the Llama3 with
    its FSDP's bfloat16 mixed precision on top: the plain model's report, field by field,
    and the parameters the real backward gave a gradient."""
    lines = {line["case"]: line for line in run_probe("titan_job_probe.py", tmp_path / "store")}
    assert set(lines) == {
        "llama3/spmd_types",
        "llama3/partial_dtensor+fsdp",
        "deepseek_v3/partial_dtensor",
    }
    for case, line in lines.items():
        assert line["used"] > 0, case
        assert line["equal"] is None, f"{case}, against plain: {line['equal']}"
        assert line["truth"] is None, f"{case}, against the real backward: {line['truth']}"


SHARDED = ["deepseek_v3:debugmodel:2", "deepseek_v3:debugmodel:16", "kimi_k2_7:debugmodel:2"]


@pytest.fixture(scope="module")
def sharded_both_ways() -> dict[str, dict]:
    return {line["case"]: line for line in run_probe("titan_experts_probe.py", *SHARDED)}


@pytest.mark.processes
@pytest.mark.parametrize("case", SHARDED)
def test_the_torchtitan_layout_shards_as_torchtitan_does(
    sharded_both_ways: dict[str, dict], case: str
) -> None:
    """Each unit's bytes and flag, and each parameter's shard, as torchtitan's own
    functions make them: a mixture of experts on more ranks than experts, a VLM."""
    record = sharded_both_ways[case]
    theirs = {modules: unit for modules, unit in record["their_units"].items() if unit[0]}
    assert record["plan_units"] == theirs
    assert record["our_params"] == record["their_params"]


@pytest.mark.processes
def test_what_the_comparisons_are_about_is_there(sharded_both_ways: dict[str, dict]) -> None:
    """DeepSeek-V3's debug model has 8 experts a block: on 16 ranks torchtitan shards their
    weights on dim 1 (on 2, on dim 0); Kimi K2.7's vision encoder is one unit."""
    wide, narrow = (sharded_both_ways[f"deepseek_v3:debugmodel:{w}"] for w in (16, 2))
    assert set(wide["shard_dims"].values()) == {1} and not narrow["shard_dims"]
    assert "(Shard(dim=1),)" in {placement for _, placement in wide["their_params"].values()}
    assert "vision_encoder" in sharded_both_ways["kimi_k2_7:debugmodel:2"]["their_units"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("registry", "flavor", "blocks"),
    [("llama3", "405B", 126), ("deepseek_v3", "671B", 61)],
)
def test_torchtitan_models_run_on_meta_at_their_real_sizes(
    registry: str, flavor: str, blocks: int
) -> None:
    profile = execorder.profile(
        f"torchtitan.models.{registry}:model_registry",
        init_kwargs={"flavor": flavor},
        input_size="tokens=int64[1,64]@0:1000",
        backward=True,
    )
    report = profile.report
    assert profile.device == "meta" and not profile.notes
    assert (
        sum(1 for c in report.modules if c.name.count(".") == 1 and "layers." in c.name) == blocks
    )
    assert report.summary.params_unused == report.summary.params_dead == 0
    assert dict(report.inputs_made) == {
        "positions": InputSource.TRAINER,
        "attention_masks": InputSource.TRAINER,
    }


@pytest.mark.slow
def test_on_meta_the_calls_are_those_of_a_real_forward() -> None:
    """The debug model's calls on meta (flex attention stood in for) against a real forward
    on CPU, where its flex attention runs for real (eagerly: the same function, not compiled)."""
    from titan import llama3
    from torch.nn.attention.flex_attention import flex_attention
    from torchtitan.models.common.attention import FlexAttention

    on_meta = execorder.profile(f"{TITAN}:llama3", input_size=TOKENS).report
    torch.manual_seed(0)
    model = llama3()
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, _: calls.append(names[id(m)]))
        for m in model.modules()
    ]
    tokens = torch.randint(0, 2048, (1, 128))
    positions = torch.arange(128).expand(1, 128)
    compiled = FlexAttention.__dict__["compiled_flex_attn"]
    FlexAttention.compiled_flex_attn = staticmethod(  # type: ignore[method-assign]
        lambda q, k, v, *, kernel_options, **rest: flex_attention(q, k, v, **rest)
    )
    try:
        with torch.no_grad():
            model(tokens, positions, model.get_attention_masks(positions=positions))
    finally:
        FlexAttention.compiled_flex_attn = compiled  # type: ignore[method-assign]
        for hook in hooks:
            hook.remove()
    assert [c.name for c in on_meta.modules] == calls


def test_the_plan_says_how_many_parameters_are_sharded_on_dim_1() -> None:
    from execorder.output.terminal import draw, plain_text
    from execorder.output.views import fsdp_view

    def sharding(world: int) -> str:
        plan = execorder.fsdp.plan(
            "torchtitan.models.deepseek_v3:model_registry",
            init_kwargs={"flavor": "debugmodel"},
            input_size="tokens=int64[1,64]@0:1000",
            layout="torchtitan",
            world_size=world,
        )
        return " ".join(plain_text(draw(fsdp_view(plan)), width=400).split())

    assert "as FSDP2 pads dim 0, 15 parameters on dim 1)" in sharding(16)  # 5 blocks x 3
    assert "as FSDP2 pads dim 0)" in sharding(8)  # as many ranks as experts
