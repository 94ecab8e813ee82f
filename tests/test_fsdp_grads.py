"""The plan's split-gradient check under real FSDP2: two ranks on CPU (gloo), gradients compared.

One bounded subprocess (tests/fsdp_grads_probe.py) shards each model by a
plan with the units named, runs a step, and compares every gradient FSDP2
leaves with a plain backward of both ranks' inputs. Where a unit's gradient
comes in several backward passes, the last a reentrant checkpoint's
recompute, FSDP2 leaves it unsharded and unreduced: the check names exactly
those units, and no other.
"""

from __future__ import annotations

import pytest
from conftest import run_probe

from execorder.analysis.sharding import CheckKind

pytestmark = [pytest.mark.processes]

pytest.importorskip("torch.distributed.fsdp")

COMBOS = [
    "checkpoint-reused-twice=block",  # checkpointed twice: wrong
    "checkpoint-reused-after=block",  # checkpointed, then run again outside: wrong
    "checkpoint-reused-first=block",  # run outside first, then checkpointed: right
    "checkpoint-loop=encoder.layer",  # the layer as the unit: wrong
    "checkpoint-loop=encoder",  # the module running the checkpoints as the unit: right
    "shared=Linear",  # the sample: each Linear of the shared layer
    "checkpoint-reentrant=CheckpointedBlock",  # each block checkpointed once: right
    "own-checkpoint-reused=block",  # a Function of the model's own, twice: wrong
    "own-checkpointing-nested=embed",  # run outside first, then in the model's own: right
    "writes-cache=CacheBlock",  # each block writes its cache into FSDP2's copy: wrong
    "writes-cache=",  # the layout's own: the blocks left to the root: right
]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    store = tmp_path_factory.mktemp("fsdp-grads") / "store"
    return {line["combo"]: line for line in run_probe("fsdp_grads_probe.py", store, *COMBOS)}


@pytest.mark.parametrize("combo", COMBOS)
def test_the_check_names_exactly_the_units_fsdp2_leaves_a_wrong_gradient(
    observed: dict[str, dict], combo: str
) -> None:
    line = observed[combo]
    kind = CheckKind.INPUT_WRITE if combo.startswith("writes-") else CheckKind.SPLIT_GRADIENT
    flagged = set(line["checks"].get(kind.value, []))
    wrong_units = {param.rpartition(".")[0] for param in line["wrong"]}
    assert flagged == wrong_units, line


def test_both_outcomes_are_seen(observed: dict[str, dict]) -> None:
    """The comparison means something only where FSDP2 does go wrong, and somewhere not."""
    assert observed["checkpoint-reused-twice=block"]["wrong"]
    assert not observed["checkpoint-loop=encoder"]["wrong"]
    assert observed["writes-cache=CacheBlock"]["wrong"]
    assert not observed["writes-cache="]["wrong"]
