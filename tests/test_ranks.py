"""Across ranks, without processes: records, digests, groups, and where groups part.

The exchange over real ranks is tested in tests/test_ranks_real.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import models
import pytest
import torch
import typer
from typer.testing import CliRunner

import execorder
from execorder.analysis.ranks import (
    DIGEST_BYTES,
    RankRecord,
    compare_records,
    group_ranks,
    record_of,
)
from execorder.cli import app
from execorder.loading import Inputs
from execorder.output.markdown import draw
from execorder.output.views import ranks_view


def rank_report(model: object, rank: int, **options: object) -> execorder.Report:
    return execorder.Profiler(model, **options).run(seed=rank).report  # type: ignore[arg-type]


def test_a_digest_is_48_bytes_and_equal_for_equal_forwards() -> None:
    same = [record_of(rank_report(models.WithDropout, r, input_size=(2, 4))) for r in range(3)]
    assert {len(r.digest()) for r in same} == {DIGEST_BYTES}
    assert len({r.digest() for r in same}) == 1  # dropout draws differ; the forward does not
    dropped = [record_of(rank_report(models.LayerDrop, r, input_size=(2, 4))) for r in range(4)]
    assert len({r.digest() for r in dropped}) > 1


def test_each_part_of_a_digest_sees_its_own_difference() -> None:
    base = RankRecord(("", "a"), {"a.w": "used"}, ("a.w",))
    for other in (
        RankRecord(("", "b"), {"a.w": "used"}, ("a.w",)),
        RankRecord(("", "a"), {"a.w": "dead"}, ("a.w",)),
        RankRecord(("", "a"), {"a.w": "used"}, None),
        RankRecord(error="boom"),
    ):
        assert other.digest() != base.digest()
    assert RankRecord(("", "a"), {"a.w": "used"}, ("a.w",)).digest() == base.digest()


def test_groups_are_in_order_of_their_lowest_rank() -> None:
    assert group_ranks([b"x", b"y", b"x", b"z", b"y"]) == [(0, 2), (1, 4), (3,)]


def test_the_first_divergence_names_what_each_group_ran_or_that_it_ended() -> None:
    long = RankRecord(("", "l0", "l1", "l2"), {"l2.w": "used", "l1.w": "used"})
    short = RankRecord(("", "l0", "l1"), {"l2.w": "unused", "l1.w": "used"})
    other = RankRecord(("", "l0", "l2", "l1"), {"l2.w": "used", "l1.w": "used"})
    result = compare_records(
        [((0, 2), long), ((1,), short), ((3,), other)], world_size=4, target="m"
    )
    assert result.diverged
    assert result.first_divergence is not None
    assert result.first_divergence.index == 2
    assert result.first_divergence.by_group == ("l1", "l1", "l2")
    assert [(d.param, d.by_group) for d in result.status_differs] == [
        ("l2.w", ("used", "unused", "used"))
    ]
    ended = compare_records([((0,), long), ((1,), short)], world_size=2, target="m")
    assert ended.first_divergence is not None
    assert ended.first_divergence.by_group == ("l2", None)


def test_a_difference_in_gradient_order_only() -> None:
    a = RankRecord(("",), {"w": "used", "v": "used"}, ("w", "v"))
    b = RankRecord(("",), {"w": "used", "v": "used"}, ("v", "w"))
    result = compare_records([((0,), a), ((1,), b)], world_size=2, target="m")
    assert result.diverged and result.first_divergence is None and not result.status_differs
    assert result.backward_divergence is not None
    assert result.backward_divergence.by_group == ("w", "v")
    data = result.to_dict()
    assert data["backward_divergence"] == {"index": 0, "by_group": ["w", "v"]}


def test_a_rank_that_could_not_record_is_its_own_group() -> None:
    ok = RankRecord(("", "a"), {"a.w": "used"})
    result = compare_records(
        [((0, 1), ok), ((2,), RankRecord(error="no such file"))], world_size=3, target="m"
    )
    assert [g.error for g in result.errors] == ["no such file"]
    assert result.first_divergence is None and result.status_differs == ()


def test_the_view_says_agree_or_where_they_part() -> None:
    same = RankRecord(("", "a"), {"a.w": "used"})
    agreed = compare_records([((0, 1, 2), same)], world_size=3, target="m")
    assert "agree: all 3 ranks ran the same module calls" in draw(ranks_view(agreed))
    other = RankRecord(("", "b"), {"a.w": "unused"})
    parted = compare_records([((0,), same), ((1, 2), other)], world_size=3, target="m")
    text = draw(ranks_view(parted))
    assert "diverged: 2 groups of ranks" in text
    assert "rank 0 ran a; ranks 1, 2 ran b" in text
    assert "`a.w`" in text


def test_an_inputs_function_gets_rank_and_world_size_when_it_takes_them() -> None:
    seen = {}

    def per_rank(rank: int, world_size: int) -> object:
        seen.update(rank=rank, world_size=world_size)
        return (torch.randn(2, 4),)

    Inputs(per_rank, keywords={"rank": 3, "world_size": 8}).make("cpu")
    assert seen == {"rank": 3, "world_size": 8}
    Inputs(lambda: (torch.randn(2, 4),), keywords={"rank": 3}).make("cpu")  # takes neither


def test_a_run_seed_draws_inputs_and_forward_but_not_the_build() -> None:
    profiler = execorder.Profiler(models.LayerDrop, input_size=(2, 4), seed=0)
    first, again = profiler.run(seed=5).report, profiler.run(seed=5).report
    assert first.seed == 5 and record_of(first) == record_of(again)
    assert profiler.run().report.seed == 0


def _launched(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Any, list[str] | None]:
    """Run ``execorder ranks ARGS`` outside a job; what --nproc would start each rank with."""
    import sys

    started: list[list[str]] = []
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(
        sys.modules["execorder.cli.ranks"],
        "launch",
        lambda nproc, argv, timeout: started.append(argv) or 0,
    )
    result = CliRunner().invoke(app, ["ranks", *args])
    return result, started[0] if started else None


def test_each_rank_gets_every_option_given_but_nproc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Every option of the command, each away from its default: a new option
    # that --nproc would not forward fails here.
    given = [
        "tests/models.py:LayerDrop", "--nproc", "2",
        "--concrete", "flag=true", "-c", "other=1", "--init", "width=4", "--device", "cpu",
        "--format", "json", "--output", str(tmp_path / "out.json"), "--fail-on", "divergence",
        "--mode", "fx", "--input", "x=[2,4]", "--inputs", "tests/models.py:LayerDrop",
        "--backward", "--no-assume", "--seed", "7", "--timeout", "30", "--debug",
    ]  # fmt: skip
    result, argv = _launched(monkeypatch, *given)
    assert result.exit_code == 0, result.output
    assert argv is not None and "--nproc" not in argv
    command = typer.main.get_command(app).commands["ranks"]  # type: ignore[attr-defined]
    parsed = command.make_context("ranks", list(argv)).params
    original = command.make_context("ranks", list(given)).params
    defaults = command.make_context("ranks", ["t.py:M"]).params
    assert parsed.pop("nproc") is None and original.pop("nproc") == 2
    assert original == parsed
    untouched = [k for k in parsed if parsed[k] == defaults[k]]
    assert untouched == [], "every option should be given away from its default here"


def test_options_left_at_their_defaults_are_not_forwarded(monkeypatch: pytest.MonkeyPatch) -> None:
    result, argv = _launched(
        monkeypatch, "tests/models.py:LayerDrop", "--nproc", "2", "--input", "[2,4]"
    )
    assert result.exit_code == 0, result.output
    assert argv == ["tests/models.py:LayerDrop", "--input", "[2,4]"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["tests/no_such_file.py:Net"], "no_such_file.py"),
        (["tests/models.py:NoSuchModel"], "NoSuchModel"),
        (["tests/models.py:LayerDrop", "--inputs", "tests/models.py:nothing_here"], "nothing_here"),
        (["tests/models.py:LayerDrop", "--concrete", "novalue"], "--concrete"),
    ],
)
def test_what_cannot_load_is_one_error_before_any_rank_starts(
    monkeypatch: pytest.MonkeyPatch, args: list[str], said: str
) -> None:
    extra = [] if "--inputs" in args else ["--input", "[2,4]"]
    result, argv = _launched(monkeypatch, *args, "--nproc", "2", *extra)
    assert argv is None, "no rank should start"
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("execorder: error: ") and said in lines[0]


def test_the_command_outside_a_job_says_how_to_start_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    result = CliRunner().invoke(app, ["ranks", "tests/models.py:LayerDrop", "--input", "[2,4]"])
    assert result.exit_code == 2
    assert "give --nproc N, or launch it with torchrun" in result.stderr
    no_data = CliRunner().invoke(app, ["ranks", "tests/models.py:LayerDrop", "--nproc", "2"])
    assert no_data.exit_code == 2
    assert "ranks part on their data: give each rank its inputs" in no_data.stderr
    bad = CliRunner().invoke(app, ["ranks", "tests/models.py:LayerDrop", "--fail-on", "unused"])
    assert bad.exit_code == 2 and "the only check is: divergence" in bad.stderr


def test_every_rank_builds_with_seed_0_and_runs_with_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    import execorder.ranks

    cli = sys.modules["execorder.cli.ranks"]  # the command's module

    built: list[Any] = []
    ran: list[Any] = []

    class Spy:
        def __init__(self, options: Any, **_: Any) -> None:
            built.append(options.seed)

        def run(self, concrete_args: Any, *, seed: Any) -> Any:
            ran.append(seed)
            return execorder.trace(models.LayerDrop())

    def job(record: Any, **_: Any) -> Any:
        record(3, 4)
        return 3, compare_records([((0,), RankRecord(calls=("",)))], world_size=4, target="t")

    monkeypatch.setattr(cli, "Session", Spy)
    monkeypatch.setattr(execorder.ranks, "compare_job", job)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    result = CliRunner().invoke(app, ["ranks", "tests/models.py:LayerDrop", "--input", "[2,4]"])
    assert result.exit_code == 0, result.output
    assert built == [0] and ran == [3]
    CliRunner().invoke(
        app, ["ranks", "tests/models.py:LayerDrop", "--input", "[2,4]", "--seed", "9"]
    )
    assert built == [0, 9] and ran == [3, 9]
