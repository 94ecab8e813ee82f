"""``--layout torchtitan`` is what accelerate's FSDP2 preparation makes of a transformers decoder.

accelerate (``Accelerator.prepare`` with an FSDP2 plugin and
``transformer_based_wrap``) shards each ``_no_split_modules`` block, the input
embedding, the final norm with the output head as one group kept gathered
(the embedding joins it when tied), and the root: torchtitan's layout. Its own
``fsdp2_prepare_model`` runs in tests/accelerate_probe.py, over a fake process
group (global state: a subprocess), beside ``execorder.fsdp.shard`` of the plan.
"""

from __future__ import annotations

import pytest
from conftest import run_probe

pytestmark = [pytest.mark.processes, pytest.mark.transformers]
pytest.importorskip("accelerate", reason="accelerate is part of the dev install (with peft)")
pytest.importorskip("hf", reason="transformers is not installed (pip install execorder[hf])")

CASES = ["llama", "llama-tied", "gpt2", "mixtral"]


@pytest.fixture(scope="module")
def sharded() -> dict[str, dict]:
    return {line["case"]: line for line in run_probe("accelerate_probe.py", *CASES)}


@pytest.mark.parametrize("case", CASES)
def test_the_torchtitan_layout_shards_as_accelerate_prepares(sharded: dict, case: str) -> None:
    """The same units (their modules), the same bytes a rank holds, the same flags."""
    record = sharded[case]
    assert record["ours"] == record["theirs"]


def test_what_the_comparison_is_about_is_there(sharded: dict) -> None:
    """Groups kept gathered, with the embedding when tied; blocks that reshard."""
    untied, tied = sharded["llama"]["theirs"], sharded["llama-tied"]["theirs"]
    assert untied["lm_head+model.norm"][1] is False and untied["model.embed_tokens"][1] is True
    assert tied["lm_head+model.embed_tokens+model.norm"][1] is False
    assert all(flag for name, (_, flag) in untied.items() if name.startswith("model.layers."))
