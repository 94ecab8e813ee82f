"""execorder's prediction equals what DistributedDataParallel itself reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from cases import CASES, predict

PROBE = Path(__file__).resolve().parent / "ddp_probe.py"

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
    store = tmp_path_factory.mktemp("ddp") / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_DISTRIBUTED")}
    try:
        result = subprocess.run(
            [sys.executable, str(PROBE), str(store), *CASES],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the DDP probe did not finish within 240 s")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
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
        assert predicted == ddp_indices[name]


def test_ddp_fails_on_enough_models(ddp_indices: dict[str, list[int] | None]) -> None:
    """The comparison is only meaningful where DDP actually fails."""
    failing = [name for name, indices in ddp_indices.items() if indices]
    assert len(failing) >= 3, failing
    assert ddp_indices["seed-all-layers"] == [0, 1, 2, 5, 6, 7]
