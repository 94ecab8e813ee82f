"""``--layout accelerate`` is what accelerate's FSDP2 preparation makes of a transformers model.

accelerate (``Accelerator.prepare`` with an FSDP2 plugin and
``transformer_based_wrap``) shards each ``_no_split_modules`` block, the input
embedding, the final norm with the output head as one group kept gathered
(the embedding joins it when tied), and the root. Its own
``fsdp2_prepare_model`` runs in tests/accelerate_probe.py, over a fake process
group (global state: a subprocess), beside ``execorder.fsdp.shard`` of the
plans of ``--layout accelerate`` and ``--layout torchtitan``.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest
from conftest import needs, run_probe

# Found, not imported: importing accelerate takes seconds, and the probe does it.
ACCELERATE = pytest.mark.skipif(
    find_spec("accelerate") is None, reason="accelerate is part of the dev install (with peft)"
)
TRANSFORMERS = needs("transformers", "transformers is not installed (pip install execorder[hf])")
pytestmark = [pytest.mark.processes, pytest.mark.transformers, ACCELERATE, TRANSFORMERS]

CASES = ["llama", "llama-tied", "gpt2", "mixtral", "llama4"]


@pytest.fixture(scope="module")
def sharded() -> dict[str, dict]:
    return {line["case"]: line for line in run_probe("accelerate_probe.py", *CASES)}


@pytest.mark.parametrize("case", CASES)
def test_the_accelerate_layout_shards_as_accelerate_prepares(sharded: dict, case: str) -> None:
    """The same units (their modules), the same bytes a rank holds, the same flags."""
    record = sharded[case]
    assert record["accelerate"] == record["theirs"]


def test_torchtitan_and_accelerate_part_where_accelerate_finds_no_final_norm(
    sharded: dict,
) -> None:
    """The same layout where accelerate finds the final norm; Llama 4 names a base model
    (``language_model``) it does not have, so accelerate leaves its norm in the root and
    keeps the head gathered alone, where torchtitan's layout groups them."""
    for case in ("llama", "llama-tied", "gpt2", "mixtral"):
        assert sharded[case]["torchtitan"] == sharded[case]["theirs"], case
    llama4 = sharded["llama4"]
    assert llama4["theirs"]["lm_head"][1] is False and "" in llama4["theirs"]
    assert "lm_head+model.norm" in llama4["torchtitan"]
