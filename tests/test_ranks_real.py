"""Across ranks, on real ranks: 4 and 2 gloo processes on CPU, under torchrun and --nproc.

The oracle is independent of execorder: each rank's forward is replayed in
this process with plain forward hooks (the same build seed, the rank's own
seed for inputs and run) and a real backward; the groups, the first
divergent call and the parameters whose gradient differs follow from those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import models
import pytest
import torch
from moe import MoE

pytestmark = pytest.mark.processes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROBE = HERE / "ranks_probe.py"
WORLD = 4


def probe(tmp_path: Path, world: int, what: str, *, torchrun: bool = False) -> list[dict[str, Any]]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    try:
        done = subprocess.run(
            [
                sys.executable,
                *(launcher if torchrun else []),
                str(PROBE),
                str(tmp_path / f"store-{what}"),
                str(world),
                what,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ranks probe ({what}) did not finish in 120 s")
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def replay(build: Any, make_inputs: Any, rank: int) -> tuple[list[str], set[str]]:
    """One rank's forward, seen by hooks: modules called in order, params given a gradient."""
    torch.manual_seed(0)
    model = build()
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[str] = []
    for module in model.modules():
        module.register_forward_pre_hook(lambda m, _: calls.append(names[id(m)]))
    torch.manual_seed(rank)
    args, kwargs = make_inputs(rank)
    out = model(*args, **kwargs)
    out.float().sum().backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None}
    return calls, graded


CASES = {
    "dropout": (models.WithDropout, lambda r: ((torch.randn(2, 4),), {})),
    "layerdrop": (models.LayerDrop, lambda r: ((torch.randn(2, 4),), {})),
    "image": (models.OptionalImage, lambda r: ((), models.image_on_rank_0(rank=r, world_size=4))),
    "early-exit": (models.EarlyExit, lambda r: (models.lengths_by_rank(rank=r), {})),
    "moe": (MoE, lambda r: ((torch.randn(4, 16),), {})),
}


def expected(case: str, world: int) -> dict[str, Any]:
    build, make_inputs = CASES[case]
    runs = [replay(build, make_inputs, rank) for rank in range(world)]
    keys = [(tuple(calls), frozenset(graded)) for calls, graded in runs]
    groups = list(dict.fromkeys(keys))
    ranks = [[r for r in range(world) if keys[r] == key] for key in groups]
    sequences = [list(calls) for calls, _ in groups]
    first = None
    for index in range(max(len(s) for s in sequences)):
        there = [s[index] if index < len(s) else None for s in sequences]
        if len(set(there)) > 1:
            first = {"call": index, "by_group": there}
            break
    differs = set().union(*(g for _, g in groups)) - set.intersection(*(set(g) for _, g in groups))
    return {"groups": ranks, "first_divergence": first, "status_differs": differs}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    found = probe(tmp_path_factory.mktemp("ranks"), WORLD, "compare", torchrun=True)
    return {r["case"]: r for r in found}


@pytest.mark.parametrize("case", list(CASES))
def test_four_ranks_give_the_groups_and_first_divergence_a_replay_gives(
    compared: dict[str, dict[str, Any]], case: str
) -> None:
    result, want = compared[case], expected(case, WORLD)
    assert [g["ranks"] for g in result["groups"]] == want["groups"]
    assert result["diverged"] is (len(want["groups"]) > 1)
    assert result["first_divergence"] == want["first_divergence"]
    assert {d["param"] for d in result["status_differs"]} == want["status_differs"]


def test_the_cases_cover_agreement_and_each_kind_of_divergence(
    compared: dict[str, dict[str, Any]],
) -> None:
    assert not compared["dropout"]["diverged"]  # dropout is random, but decides no module
    assert compared["image"]["first_divergence"]["by_group"] == ["vision", "head"]
    assert compared["early-exit"]["first_divergence"]["by_group"] == [None, "layers.2"]
    for case in ("layerdrop", "moe"):
        assert compared[case]["diverged"], case


def test_record_around_a_real_step_then_compare(tmp_path: Path) -> None:
    (result,) = probe(tmp_path, 2, "record")
    want = [
        replay(models.LayerDrop, lambda r: ((torch.randn(2, 4),), {}), rank)[0] for rank in range(2)
    ]
    assert result["diverged"] is (want[0] != want[1])
    assert result["diverged"], "seeds 0 and 1 drop different layers"


@pytest.mark.timing
def test_the_divergence_hangs_real_fsdp2_until_the_collective_times_out(tmp_path: Path) -> None:
    outcomes = probe(tmp_path, 2, "fsdp")
    assert len(outcomes) == 2
    assert all(o["outcome"].startswith("RuntimeError") for o in outcomes), outcomes
    # The first rank to time out leaves; the other may see its peer gone instead.
    assert any("Timed out" in o["outcome"] for o in outcomes), outcomes


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "100"},
    )


def test_the_command_names_the_cause_of_that_hang_under_torchrun() -> None:
    done = _cli(
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "execorder", "ranks", "tests/models.py:OptionalImage",
        "--inputs", "tests/models.py:image_on_rank_0", "-f", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["diverged"] and result["world_size"] == 2
    assert result["groups"] == [
        {"ranks": [0], "calls": 6, "error": None, "compared": True},
        {"ranks": [1], "calls": 4, "error": None, "compared": True},
    ]
    assert result["first_divergence"] == {"call": 3, "by_group": ["vision", "head"]}
    assert [d["param"] for d in result["status_differs"]] == [
        "vision.lin.weight",
        "vision.lin.bias",
    ]


def test_nproc_launches_the_ranks_and_gates_on_divergence(tmp_path: Path) -> None:
    out = tmp_path / "ranks.json"
    args = ["--nproc", "2", "--input", "[2,4]", "-f", "json", "-o", str(out)]
    gated = _cli(
        "-m", "execorder", "ranks", "tests/models.py:LayerDrop", *args, "--fail-on", "divergence"
    )
    assert gated.returncode == 1, gated.stderr
    assert "check failed: divergence" in gated.stderr
    assert json.loads(out.read_text())["diverged"]
    agreed = _cli(
        "-m",
        "execorder",
        "ranks",
        "tests/models.py:WithDropout",
        "--nproc",
        "2",
        "--input",
        "[2,4]",
    )
    assert agreed.returncode == 0, agreed.stderr
    assert "agree: all 2 ranks ran the same module calls" in agreed.stdout


def test_a_rank_that_cannot_record_is_reported_and_nobody_hangs() -> None:
    done = _cli(
        "-m",
        "execorder",
        "ranks",
        "tests/models.py:WithDropout",
        "--nproc",
        "2",
        "--input",
        "[3,5]",
    )
    assert done.returncode == 2
    assert "execorder: error: on rank 0, 1:" in done.stderr
