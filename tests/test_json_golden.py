"""The JSON the command line writes, byte for byte: schema version 1 is a contract.

One document of each kind, and an FSDP2 plan with each kind of check, as
``--format json`` writes them, against files written by execorder before
the records held facts and the sentences were composed when written
(``pytest --update-golden`` rewrites them; review the diff).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from execorder.cli import app

SEED = "sample_models/seed.py:Model"
ENCDEC = "sample_models/encdec.py:EncoderDecoder"
DOCUMENTS = {
    "trace-seed": ["trace", SEED, "-c", "run_all_layers=true"],
    "trace-external": ["trace", "tests/models.py:ExternalUse"],
    "trace-moe-on-meta": ["trace", "sample_models/moe.py:MoE", "--input", "x=float32[4,16]"],
    "sweep-seed": ["trace", SEED, "--sweep", "run_all_layers=true,false"],
    "ddp-indices-seed": ["ddp-indices", SEED, "0 1 2 5 6 7", "-c", "run_all_layers=true"],
    "plan-encdec": ["fsdp", ENCDEC, "--input", "int64[2,16]@0:100"],
    "plan-seed": ["fsdp", SEED, "-c", "run_all_layers=true"],
    "plan-root-only": ["fsdp", "tests/models.py:TwoHeads", "--input", "[2,4]"],
    "plan-not-run": ["fsdp", "tests/models.py:SkipsLayer", "--input", "[2,4]", "-c", "deep=false"],
    "plan-assumption": ["fsdp", "sample_models/moe.py:MoE", "--input", "float32[4,16]"],
    "plan-values-choice": [
        "fsdp", "sample_models/moe.py:MoE", "--input", "float32[64,16]", "--device", "cpu",
    ],
    "plan-varies": [
        "fsdp", "tests/models.py:SkipsLayer", "--input", "[2,4]", "--sweep", "deep=true,false",
    ],
    "plan-registration-order": ["fsdp", "tests/models.py:Permuted", "--input", "[2,4]"],
    "plan-repeated": ["fsdp", "tests/models.py:UnitTwice", "--input", "[2,4]"],
    "plan-shared": ["fsdp", "tests/models.py:SharedAcrossUnits", "--input", "[2,4]", "-u", "Unit"],
    "plan-untied": ["fsdp", "tests/models.py:SharedAcrossUnits", "--input", "[2,4]"],
    "plan-external-use": [
        "fsdp", "tests/models.py:ReadsAnotherUnit", "--input", "[2,4]", "-u", "Unit",
    ],
    "plan-read-outside": ["fsdp", "tests/models.py:ReadsAnotherUnit", "--input", "[2,4]"],
    "plan-input-write": [
        "fsdp", "tests/models.py:WritesCache", "--input", "[2,4]", "-u", "CacheBlock",
    ],
    "plan-writes-inputs": ["fsdp", "tests/models.py:WritesCache", "--input", "[2,4]"],
    "plan-split-gradient": ["fsdp", "sample_models/shared.py:SharedLayers"],
    "plan-random-choice": ["fsdp", "tests/models.py:LayerDrop", "--input", "[2,4]"],
    "trace-random-choice": ["trace", "tests/models.py:LayerDrop", "--input", "[2,4]"],
    "plan-given-units": [
        "fsdp", "tests/models.py:ReadsAnotherUnit", "--input", "[2,4]", "--unit", "Unit",
    ],
    "plan-memory": [
        "fsdp", "tests/models.py:MlpBlocks", "--input", "[8,256]", "--world-size", "2",
        "--memory", "--memory-budget", "1MB",
    ],
    "trace-memory": ["trace", ENCDEC, "--input", "int64[2,16]@0:100", "--memory"],
}  # fmt: skip


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_json_is_what_it_was(name: str, golden: Callable[[str, str], None]) -> None:
    result = CliRunner().invoke(app, [*DOCUMENTS[name], "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    golden(f"json/{name}.json", result.stdout)


def test_the_plans_cover_every_kind_of_check() -> None:
    import json

    from conftest import GOLDEN

    from execorder.analysis.sharding import CheckKind

    kinds = {
        check["kind"]
        for path in (GOLDEN / "json").glob("plan-*.json")
        for check in json.loads(path.read_text())["checks"]
    }
    assert kinds >= {k.value for k in CheckKind} - {"order-varies"}
