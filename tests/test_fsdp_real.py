"""execorder's FSDP2 plans under real FSDP2: two ranks on CPU (gloo), all-gathers observed.

One bounded subprocess (tests/fsdp_probe.py) shards each model by its plan,
or by lists built from registration order, runs two training steps, and logs
each unit's forward and backward starts and each all-gather FSDP2 issues.
The plan is checked against what FSDP2 did, not against itself: every
prefetch it sets gathers the unit that runs next, the gathers follow the
recorded order, and each registration-order mistarget it predicts is one
FSDP2 really makes, and no other.
"""

from __future__ import annotations

import json
from pathlib import Path

import models
import pytest
from conftest import Later, needs, run_probe
from encdec import EncoderDecoder

import execorder.fsdp
from execorder.analysis.sharding import CheckKind

pytestmark = [
    pytest.mark.processes,
    pytest.mark.transformers,
    needs("transformers", "transformers is not installed (pip install execorder[hf])"),
]

pytest.importorskip("torch.distributed.fsdp")
hf = Later("hf")
HERE = Path(__file__).resolve().parent
PROBE = HERE / "fsdp_probe.py"

IDS = {"input_size": "int64[1,16]@0:100"}
CASES = {
    "encdec": (EncoderDecoder, {"input_size": "int64[2,16]@0:100", "backward": True}),
    "Permuted": (models.Permuted, {"input_size": (2, 4)}),
    "UnitTwice": (models.UnitTwice, {"input_size": (2, 4)}),
    "UnitTwice@always": (
        models.UnitTwice,
        {"input_size": (2, 4), "reshard_after_forward": "always"},
    ),
    "llama": (lambda: hf.tiny_llama(layers=3), {"input_size": "int64[1,16]@0:100"}),
    # torchtitan's layout: the embedding, each block, [norm, lm_head] as one group; tied, the
    # embedding joins the group.
    "llama_titan": (
        lambda: hf.tiny_llama(layers=3, tie=False),
        {"input_size": "int64[1,16]@0:100", "layout": "torchtitan", "world_size": 2},
    ),
    "llama_titan_tied": (
        lambda: hf.tiny_llama(layers=3),
        {"input_size": "int64[1,16]@0:100", "layout": "torchtitan", "world_size": 2},
    ),
    # The blocks layout leaves BERT's embedding, tied to the head in the root, to the root.
    "bert_lm": (lambda: hf.tiny_bert_lm(), IDS),
}
# Sharded over 4 ranks with bf16 parameters: bytes and flags only.
WIDE = {
    "llama_titan": (
        lambda: hf.tiny_llama(layers=3, tie=False),
        {
            "input_size": "int64[1,16]@0:100",
            "layout": "torchtitan",
            "world_size": 4,
            "param_dtype": "bfloat16",
            "reduce_dtype": "float32",
        },
    ),
    "encdec": (
        EncoderDecoder,
        {"input_size": "int64[2,16]@0:100", "world_size": 4, "reshard_after_forward": "always"},
    ),
}
# Registration-order lists mistarget only where execution order is not registration order.
REGISTRATION = ("encdec", "Permuted", "UnitTwice", "llama")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """What FSDP2 did with each case's lists, from one probe run."""
    plans = {case: execorder.fsdp.plan(build, **opts) for case, (build, opts) in CASES.items()}
    specs = {}
    for case, plan in plans.items():
        specs[f"{case}/plan"] = {"case": case, "plan": plan.to_dict(), "lists": "plan"}
        if case in REGISTRATION:
            specs[f"{case}/registration"] = {
                "case": case,
                "plan": plan.to_dict(),
                "lists": "registration",
            }
    for case in (
        "ReadsAnotherUnit",
        "ReadsAnotherUnit@untied",
        "SharedAcrossUnits",
        "SharedAcrossUnits@untied",
    ):
        units = [] if case.endswith("@untied") else ["Unit"]  # @untied: the layout's own
        plan = execorder.fsdp.plan(
            getattr(models, case.split("@")[0]), input_size=(2, 4), units=units
        )
        plans[case] = plan
        specs[f"{case}/plan"] = {"case": case, "plan": plan.to_dict(), "lists": "plan"}
    # BERT sharded by every block transformers names, its embedding too (what the layout was)
    every = ["BertEmbeddings", "BertLayer"]
    plans["bert_lm@every-block"] = plan = execorder.fsdp.plan(hf.tiny_bert_lm, units=every, **IDS)
    specs["bert_lm@every-block/plan"] = {
        "case": "bert_lm@every-block",
        "plan": plan.to_dict(),
        "lists": "plan",
    }
    return _probe(tmp_path_factory, plans, specs, world=2)


@pytest.fixture(scope="module")
def observed_wide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """What FSDP2 holds and gathers on 4 ranks, bf16 parameters, for the plans of ``WIDE``."""
    plans = {case: execorder.fsdp.plan(build, **opts) for case, (build, opts) in WIDE.items()}
    specs = {
        f"{case}/plan": {"case": case, "plan": plan.to_dict(), "lists": "plan"}
        for case, plan in plans.items()
    }
    return _probe(tmp_path_factory, plans, specs, world=4)


def _probe(
    tmp_path_factory: pytest.TempPathFactory, plans: dict, specs: dict, *, world: int
) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("fsdp")
    (tmp / "plans.json").write_text(json.dumps(specs))
    found = {}
    for record in run_probe(PROBE.name, tmp / "store", tmp / "plans.json", world):
        record["plan"] = plans[record["case"]]
        found[record["key"]] = record
    return found


def prefetches(events: list, phase: str, *, gathered: bool) -> list[tuple[str, str, str | None]]:
    """Prefetches in ``phase``, as (unit prefetching, unit prefetched, the next unit to run).

    ``gathered``: only those that issued an all-gather; else every one a list
    asked for (a unit still gathered needs no all-gather).
    """
    steps = [e for e in events if e[0] == phase]
    found = []
    source = ""  # the root, when no unit with parameters has started yet
    for i, (_, kind, name, prefetched) in enumerate(steps):
        if kind == "run":
            source = name
        elif name == source:
            continue  # the unit running now: gathered already, a no-op
        elif (kind == "gather" and prefetched) if gathered else kind == "prefetch":
            following = next((e[2] for e in steps[i + 1 :] if e[1] == "run"), None)
            found.append((source, name, following))
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_every_prefetch_of_the_plan_gathers_the_unit_that_runs_next(
    observed: dict, case: str
) -> None:
    record = observed[f"{case}/plan"]
    assert "error" not in record, record.get("error")
    for phase in ("forward", "backward"):
        found = prefetches(record["events"], phase, gathered=False)
        assert found, f"no {phase} prefetch was observed"
        missed = [(s, t, n) for s, t, n in found if t != n]
        assert not missed, f"{phase}: prefetched but another unit ran next: {missed}"


@pytest.mark.parametrize("case", list(CASES))
def test_forward_gathers_follow_the_recorded_order(observed: dict, case: str) -> None:
    record = observed[f"{case}/plan"]
    plan = record["plan"]
    first_runs = list(
        dict.fromkeys(e[2] for e in record["events"] if e[0] == "forward" and e[1] == "run")
    )
    gathers = list(
        dict.fromkeys(e[2] for e in record["events"] if e[0] == "forward" and e[1] == "gather")
    )
    with_params = [u.name for u in plan.units if u.params and u.first_call is not None]
    assert first_runs == with_params
    assert gathers == with_params


@pytest.mark.parametrize("case", REGISTRATION)
def test_registration_order_mistargets_exactly_where_the_plan_says(
    observed: dict, case: str
) -> None:
    record = observed[f"{case}/registration"]
    assert "error" not in record, record.get("error")
    seen = set()
    for phase in ("forward", "backward"):
        for source, target, following in prefetches(record["events"], phase, gathered=False):
            if target != following:
                seen.add((phase, source, target))
    predicted = {
        (str(c.direction), *c.units)
        for c in record["plan"].checks
        if c.kind is CheckKind.REGISTRATION_ORDER
    }
    assert seen == predicted
    if case in ("encdec", "Permuted", "UnitTwice"):
        assert seen, "registration order differs from execution order here"
        wasted = [
            (s, t)
            for phase in ("forward", "backward")
            for s, t, n in prefetches(record["events"], phase, gathered=True)
            if t != n
        ]
        assert wasted, "a mistargeted prefetch costs an all-gather that is held"
    else:
        assert not seen, "a Llama runs its layers in registration order"


def test_a_flagged_external_use_fails_under_fsdp2(observed: dict) -> None:
    record = observed["ReadsAnotherUnit/plan"]
    kinds = [c.kind for c in record["plan"].checks]
    assert CheckKind.EXTERNAL_USE in kinds
    assert "DTensor" in record.get("error", ""), record


def test_a_parameter_flagged_as_shared_by_two_units_is_refused_by_fsdp2(observed: dict) -> None:
    record = observed["SharedAcrossUnits/plan"]
    assert [c.kind for c in record["plan"].checks] == [CheckKind.SHARED]
    assert "shared with a parameter already managed" in record.get("error", ""), record


@pytest.mark.parametrize("case", ["bert_lm", "SharedAcrossUnits@untied", "ReadsAnotherUnit@untied"])
def test_the_blocks_layout_leaves_shared_parameters_in_one_unit_and_fsdp2_trains_it(
    observed: dict, case: str
) -> None:
    """The layout's blocks that share a parameter with another unit, or whose parameters a call
    outside them reads, are left out: FSDP2, which refuses the same model sharded by every
    block, runs two steps of the plan."""
    record = observed[f"{case}/plan"]
    assert record["plan"].unit_rule.left_out and not {c.kind for c in record["plan"].checks} & {
        CheckKind.SHARED,
        CheckKind.EXTERNAL_USE,
    }
    assert "error" not in record, record["error"]
    assert {e[2] for e in record["events"] if e[1] == "run"} >= {""}
    if case == "bert_lm":
        every = observed["bert_lm@every-block/plan"]
        assert [c.kind for c in every["plan"].checks] == [CheckKind.SHARED]
        assert "shared with a parameter already managed" in every.get("error", ""), every


@pytest.mark.parametrize("case", list(CASES))
def test_each_unit_reshards_after_forward_as_the_plan_says(observed: dict, case: str) -> None:
    record = observed[f"{case}/plan"]
    plan = record["plan"]
    with_params = {u.name: u.reshard_after_forward for u in plan.units if u.params}
    assert record["reshard_after_forward"] == with_params


@pytest.mark.parametrize("case", list(CASES))
def test_each_unit_is_gathered_as_often_as_the_plan_counts(observed: dict, case: str) -> None:
    """Forward and backward all-gathers per unit in a step: a unit kept gathered is not
    gathered again in backward; a group is gathered once, whichever module runs first."""
    record = observed[f"{case}/plan"]
    plan = record["plan"]
    for phase in ("forward", "backward"):
        counted = {u.name: getattr(u.gathers, phase) for u in plan.units if u.params}
        seen = dict.fromkeys(counted, 0)
        for event in record["events"]:
            if event[0] == phase and event[1] == "gather":
                seen[event[2]] += 1
        assert seen == counted, phase


def test_the_torchtitan_layout_groups_norm_and_head_and_keeps_them_gathered(
    observed: dict,
) -> None:
    untied = observed["llama_titan/plan"]["plan"]
    assert [u.modules for u in untied.units] == [
        ("",),
        ("model.embed_tokens",),
        ("model.layers.0",),
        ("model.layers.1",),
        ("model.layers.2",),
        ("model.norm", "lm_head"),
    ]
    tied = observed["llama_titan_tied/plan"]["plan"]
    assert tied.units[1].modules == ("model.embed_tokens", "model.norm", "lm_head")
    for plan in (untied, tied):
        kept = [u.name for u in plan.units if not u.reshard_after_forward]
        assert kept == ["", plan.units[-1 if plan is untied else 1].name]


@pytest.mark.parametrize("world", ["observed", "observed_wide"])
def test_gather_and_shard_bytes_are_what_fsdp2_holds_on_each_rank(
    world: str, request: pytest.FixtureRequest
) -> None:
    found = request.getfixturevalue(world)
    ranks = 4 if world == "observed_wide" else 2
    compared = 0
    for record in found.values():
        plan = record["plan"]
        if record["lists"] != "plan" or "error" in record or plan.world_size != ranks:
            continue  # a plan sized for another world size holds other bytes
        compared += 1
        with_params = [u for u in plan.units if u.params]
        assert record["shard_bytes"] == {u.name: u.shard_bytes for u in with_params}
        assert record["gather_bytes"] == {u.name: u.gather_bytes for u in with_params}
        assert record["reshard_after_forward"] == {
            u.name: u.reshard_after_forward for u in with_params
        }
    assert compared >= 2
    wide = found.get("llama_titan/plan")
    if wide is not None and world == "observed_wide":
        plan = wide["plan"]
        assert plan.world_size == 4 and plan.param_dtype == "bfloat16"
        # bf16 gathers: half the float32 bytes, give or take dim-0 padding
        embedding = plan.unit("model.embed_tokens")
        assert embedding.gather_bytes * 2 == embedding.bytes
        assert embedding.shard_bytes * 4 == embedding.bytes
