"""Words live in views and vocabularies: no library string names a command-line flag.

The library's messages name a caller's arguments through a vocabulary
(``Words``): Python's keywords by default, the command line's flags when
``execorder.cli`` passes its own. A flag written into a string under the
library layers would reach Python users as advice they cannot follow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import execorder
from execorder.cli.words import CLI
from execorder.errors import PYTHON, Arg

PACKAGE = Path(execorder.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _flags(path: Path) -> list[str]:
    """Each flag a string (not a docstring) of the file names, with where."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    return [
        f"{path.name}:{node.lineno}: {match}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        for match in FLAG.findall(node.value)
    ]


def test_the_library_is_scanned() -> None:
    names = {str(p.relative_to(PACKAGE)) for p in LIBRARY}
    assert {"errors.py", "output/views/fsdp.py", "output/views/diff.py"} <= names
    assert not any(n.startswith("cli/") for n in names)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_library_string_names_a_flag(path: Path) -> None:
    assert _flags(path) == []


def test_the_scan_would_find_one(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text('"""Docs may say --unit."""\nHINT = f"choose units with --unit {1}"\n')
    assert _flags(planted) == ["planted.py:2: --unit"]


@pytest.mark.parametrize("arg", list(Arg))
def test_every_argument_has_words_in_both_vocabularies(arg: Arg) -> None:
    cli = CLI.arg(arg, value="x")
    assert cli == "TARGET" or cli.startswith("--"), cli
    python = PYTHON.arg(arg, value="x")
    assert not FLAG.search(python), python


def test_a_plan_says_what_to_pass_in_the_callers_words() -> None:
    import execorder.fsdp

    plan = execorder.fsdp.plan("tests/models.py:TwoHeads", input_size="[2,4]")
    (check,) = plan.checks
    assert check.message.endswith("choose units with units=['CLASS']")
    assert check.describe(CLI).endswith("choose units with --unit CLASS")
    assert plan.unit_rule.describe() == (
        "the root alone: no repeated block found (choose units with units=[...])"
    )
    assert plan.to_dict(CLI)["unit_rule"].endswith("(choose units with --unit)")
    given = execorder.fsdp.plan("tests/models.py:Permuted", input_size="[2,4]", units=["Unit"])
    assert given.unit_rule.describe() == "units=['Unit']"
    assert given.unit_rule.describe(CLI) == "--unit Unit"


# (model, units): the layers, named as units, share a weight or are read from outside
PLANNED = [
    ("TwoHeads", ()),
    ("Permuted", ()),
    ("UnitTwice", ()),
    ("ReadsAnotherUnit", ("Unit",)),
    ("WritesCache", ("CacheBlock",)),
    ("SharedAcrossUnits", ("Unit",)),
]


@pytest.mark.parametrize(("name", "units"), PLANNED)
def test_a_plans_sentences_are_its_views_in_the_json_and_the_table(
    name: str, units: tuple[str, ...]
) -> None:
    import execorder.fsdp
    from execorder.output.views import fsdp_view
    from execorder.output.views.fsdp import check_message, rule_text

    plan = execorder.fsdp.plan(f"tests/models.py:{name}", input_size="[2,4]", units=units)
    assert plan.checks, "a model with nothing to say proves nothing"
    data = plan.to_dict(CLI)
    assert [c["message"] for c in data["checks"]] == [check_message(c, CLI) for c in plan.checks]
    assert data["unit_rule"] == rule_text(plan.unit_rule, CLI)
    assert [c.describe(CLI) for c in plan.checks] == [c["message"] for c in data["checks"]]
    blocks = fsdp_view(plan, words=CLI).blocks
    table = next(b for b in blocks if str(getattr(b, "title", "")).startswith("Checks"))
    shown = [row.cells[2].text for row in table.rows]
    assert shown == [c["message"] for c in data["checks"]]


def test_a_diffs_notes_and_a_profiles_notes_are_their_views() -> None:
    from execorder.analysis import DiffNote, DiffNoteKind, diff_reports
    from execorder.output.views.diff import note_text
    from execorder.output.views.notes import note_text as profile_note_text
    from execorder.profiling import Note, NoteKind

    old = execorder.profile("tests/models.py:Permuted", input_size=(2, 4)).report
    new = execorder.profile("tests/models.py:UnitTwice", input_size=(2, 4)).report
    diff = diff_reports(old, new)
    assert diff.notes and diff.to_dict()["notes"] == [note_text(n) for n in diff.notes]
    assert str(DiffNote(DiffNoteKind.SEEDS, 0, 1)) == "seeds differ: 0 -> 1"
    note = Note(NoteKind.BUILT_ON_CPU, "meta has no kernel", "Net()")
    assert str(note) == note.message == profile_note_text(note)
    assert note.message.startswith("building Net() on the meta device failed")
