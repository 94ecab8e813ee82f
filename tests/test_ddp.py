"""execorder's prediction equals what DistributedDataParallel itself reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist
from cases import CASES, predict, unseen_backward_resting
from conftest import run_probe

PROBE = "ddp_probe.py"
PASSES_PROBE = "ddp_passes_probe.py"
CONTROLS = ["checkpoint-reentrant", "checkpoint-non-reentrant", "tied"]

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available in this torch build",
    ),
]


@pytest.fixture(scope="module")
def ddp_indices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int] | None]:
    """DDP's reported indices for every case, from one bounded subprocess.

    None for a case whose outputs need no gradient (DDP never runs a backward).
    """
    lines = run_probe(PROBE, tmp_path_factory.mktemp("ddp") / "store", *CASES)
    return {line["case"]: line["indices"] for line in lines}


@pytest.mark.parametrize("name", CASES)
def test_prediction_matches_ddp(name: str, ddp_indices: dict[str, list[int] | None]) -> None:
    report = predict(CASES[name])
    order = report.ddp_order()
    # The report's own ddp_index is DDP's number: the JSON says what DDP will say.
    predicted = [p.ddp_index for p in report.no_grad()]
    assert predicted == [order.index(p) for p in report.no_grad()]
    assert all(p.ddp_index is None for p in report.frozen)
    if ddp_indices[name] is None:
        # No output needs a gradient, so DDP never runs a backward: every
        # trainable parameter is, correctly, predicted to get none.
        assert predicted == list(range(len(order)))
    else:
        # Exactly, but for what rests on a custom Function's unseen backward (and says so).
        resting = {report.param(n).ddp_index for n in unseen_backward_resting(report)}
        assert [i for i in predicted if i not in resting] == [
            i for i in ddp_indices[name] if i not in resting
        ]


def test_ddp_fails_on_enough_models(ddp_indices: dict[str, list[int] | None]) -> None:
    """The comparison is only meaningful where DDP actually fails."""
    failing = [name for name, indices in ddp_indices.items() if indices]
    assert len(failing) >= 3, failing
    assert ddp_indices["seed-all-layers"] == [0, 1, 2, 5, 6, 7]


@pytest.fixture(scope="module")
def split_cases() -> list[str]:
    """The cases whose parameters execorder says get their gradient in several passes."""
    return [name for name in CASES if predict(CASES[name]).split_gradients]


@pytest.fixture(scope="module")
def recomputing_fared(
    split_cases: list[str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, str]]:
    """How DDP on two ranks fared on every case with a reentrant checkpoint, and controls."""
    recomputing = [name for name in CASES if predict(CASES[name]).recomputed_calls]
    names = list(dict.fromkeys([*split_cases, *recomputing, *CONTROLS]))
    lines = run_probe(PASSES_PROBE, tmp_path_factory.mktemp("passes") / "store", *names)
    fared = {line["case"]: line for line in lines}
    assert set(fared) == set(names)
    return fared


def test_a_gradient_in_several_passes_is_what_ddp_fails_on(
    split_cases: list[str], recomputing_fared: dict[str, dict[str, str]]
) -> None:
    """Where execorder says a gradient arrives in parts, DDP on two ranks raises or drifts;
    with static_graph=True, or where it says nothing, every step is the same on both ranks."""
    assert len(split_cases) >= 3, split_cases
    for name in [*split_cases, *CONTROLS]:
        line = recomputing_fared[name]
        assert (line["default"] != "ok") == (name in split_cases), line
        assert line["static_graph"] == "ok", line
    assert {recomputing_fared[name]["default"] for name in split_cases} == {"raises", "drifts"}


def test_find_unused_parameters_fails_where_a_gradient_comes_from_a_recompute_alone(
    recomputing_fared: dict[str, dict[str, str]],
) -> None:
    """DDP(find_unused_parameters=True) searches the graph forward leaves, which a reentrant
    checkpoint's block is not in: it raises exactly where execorder names parameters whose
    gradient only a recompute gives (or a gradient arrives in parts)."""
    hidden = []
    for name, line in recomputing_fared.items():
        report = predict(CASES[name])
        if report.recompute_only:
            hidden.append(name)
        expected = bool(report.recompute_only or report.split_gradients)
        assert (line["find_unused"] == "raises") == expected, (name, line)
    assert len(hidden) >= 3 and "checkpoint-reentrant" in hidden, hidden


HF_TYPES = ["llama", "gpt2", "qwen3_moe", "opt"]


@pytest.mark.transformers
@pytest.mark.parametrize("reentrant", [True, False])
def test_find_unused_parameters_on_transformers_own_checkpointing(
    reentrant: bool, tmp_path: Path
) -> None:
    """transformers' gradient checkpointing, reentrant or not: DDP with
    find_unused_parameters=True raises exactly where execorder names what only a recompute
    gives a gradient (every layer's parameters, with the reentrant flavour)."""
    pytest.importorskip("transformers")
    import warnings

    from hf_small import checkpointed, ids

    from execorder import eager

    fared = run_probe("find_unused_probe.py", tmp_path / "store", str(reentrant).lower(), *HF_TYPES)
    assert [line["model"] for line in fared] == HF_TYPES
    for line in fared:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = checkpointed(line["model"], reentrant)
            report = eager.trace(model, kwargs={"input_ids": ids(), "use_cache": False})
        layers = {p.name for p in report.all_params() if ".layers." in p.name or ".h." in p.name}
        assert (line["fares"] == "raises") == bool(report.recompute_only), line
        assert set(report.recompute_only) == (layers if reentrant else set()), line
