"""Comparing reports: the diff library and reading report files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import models
import pytest
import torch
from seed import Model
from typer.testing import CliRunner

import execorder
from execorder.analysis import CallChange, DiffNote, DiffNoteKind, Gap, diff_reports
from execorder.cli import app
from execorder.errors import ReportFileError
from execorder.report import load_report


def _seed(run_all_layers: bool) -> execorder.Report:
    return execorder.trace(Model(), concrete_args={"run_all_layers": run_all_layers})


def test_same_report_is_equivalent() -> None:
    diff = diff_reports(_seed(True), _seed(True))
    assert diff.equivalent
    assert diff.calls == (Gap(12),)
    assert diff.params == () and diff.notes == ()


def test_removed_calls_and_status_changes() -> None:
    diff = diff_reports(_seed(True), _seed(False))
    assert not diff.equivalent
    removed = [c.name for c in diff.calls if isinstance(c, CallChange) and c.op == "-"]
    assert removed == ["layer1", "relu", "layer0", "relu"]
    changes = {(p.name, p.what) for p in diff.params}
    assert changes == {
        ("weight1", "became live"),
        ("weight2", "became unused"),
        ("layer1.weight", "became unused"),
        ("layer2.0.weight", "became live"),
        ("layer2.2.weight", "became live"),
    }
    (note,) = diff.notes
    assert note.kind is DiffNoteKind.CONCRETE_ARGS and note.new == {"run_all_layers": False}
    assert note.message == "concrete args differ: run_all_layers=True -> run_all_layers=False"
    assert diff.counts()["calls_removed"] == 4


def test_reverse_direction_reports_additions() -> None:
    diff = diff_reports(_seed(False), _seed(True))
    added = [c.name for c in diff.calls if isinstance(c, CallChange) and c.op == "+"]
    assert added == ["layer1", "relu", "layer0", "relu"]
    assert ("weight2", "became dead") in {(p.name, p.what) for p in diff.params}


def test_reordered_calls_are_marked_moved() -> None:
    old = execorder.trace(models.Ordered(), concrete_args={"swap": False})
    new = execorder.trace(models.Ordered(), concrete_args={"swap": True})
    diff = diff_reports(old, new)
    moved = [(c.op, c.name) for c in diff.calls if isinstance(c, CallChange) and c.moved]
    assert sorted(moved) == [("+", "a"), ("-", "a")] or sorted(moved) == [("+", "b"), ("-", "b")]
    assert diff.counts()["calls_moved"] == 1
    order = [p for p in diff.params if p.what == "moved"]
    assert order and all(p.old != p.new for p in order)


def test_shape_changes() -> None:
    old = execorder.trace(models.NeedsWidth(4))
    new = execorder.trace(models.NeedsWidth(5))
    diff = diff_reports(old, new)
    assert ("layers.0.weight", "shape", "[4, 4]", "[5, 5]") in {
        (p.name, p.what, p.old, p.new) for p in diff.params
    }
    assert not diff.calls_changed


def test_added_and_removed_parameters_and_external_uses() -> None:
    old = execorder.trace(models.ExternalUse())
    new = execorder.trace(models.KeywordParam())
    diff = diff_reports(old, new)
    whats = {(p.name, p.what) for p in diff.params}
    assert ("lin.weight", "removed") in whats and ("weight", "added") in whats
    assert diff.external_removed == ("lin.weight used by (root)",)


def test_context_around_changes_is_bounded() -> None:
    diff = diff_reports(_seed(True), _seed(False), context=1)
    assert diff.calls[0] == Gap(7)
    assert [c.op for c in diff.calls[1:] if isinstance(c, CallChange)] == ["=", "-", "-", "-", "-"]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_report_round_trip(tmp_path: Path) -> None:
    report = _seed(True)
    path = _write(tmp_path, "r.json", json.dumps(report.to_dict()))
    assert load_report(path) == report


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[1, 2]", "not a trace report"),
        ('{"kind": "diff"}', "not a trace report (kind 'diff')"),
        ('{"kind": "report", "schema_version": 2}', "schema_version 2, this execorder reads 1"),
        ('{"kind": "report", "schema_version": 1}', "mode is missing"),
    ],
)
def test_load_report_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ReportFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_report(_write(tmp_path, "bad.json", text))


def test_a_checkpoint_given_as_a_report_is_refused_unread(tmp_path: Path) -> None:
    # torch.save writes a zip archive: binary data, refused from its first bytes.
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 64 + b"{" * 10_000)
    with pytest.raises(ReportFileError, match=r"model.pt: not a report \(binary data"):
        load_report(checkpoint)
    # Larger than any report: refused from its size, without reading a byte.
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:
        handle.truncate(3 * 10**9)  # sparse: no disk used
    with pytest.raises(ReportFileError, match=r"not a report \(3.0 GB, larger than any report"):
        load_report(huge)
    # Text that is not UTF-8 past the first bytes is still told as before.
    latin = _write(tmp_path, "latin.json", "")
    latin.write_bytes(b'{"target": "' + b"x" * 5000 + b'\xe9"}')
    with pytest.raises(ReportFileError, match="cannot read it"):
        load_report(latin)


def test_load_report_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReportFileError, match="no such file"):
        load_report(tmp_path / "nope.json")


def test_a_diff_of_two_different_models_says_so() -> None:
    from seed import Model
    from tied import TiedLM
    from transformer import Transformer

    import execorder

    seed = execorder.trace(Model(), concrete_args={"run_all_layers": True}, target="seed.py:Model")
    tied = execorder.trace(TiedLM(), target="tied.py:TiedLM")
    notes = diff_reports(seed, tied).notes
    assert [n.kind for n in notes][:2] == [DiffNoteKind.TARGETS, DiffNoteKind.ROOTS]
    said = [n.message for n in notes]
    assert "targets differ: seed.py:Model -> tied.py:TiedLM" in said
    assert "the root modules differ (Model -> TiedLM): these look like different models" in said
    small = execorder.trace(Transformer(n_layers=1), target="a")
    large = execorder.trace(Transformer(n_layers=8), target="a")
    assert diff_reports(small, large).notes == (DiffNote(DiffNoteKind.NAMES, 12, 68),)
    assert str(diff_reports(small, large).notes[0]) == (
        "only 12 of 68 parameter names are in both reports: these look like different models"
    )
    same = execorder.trace(Model(), concrete_args={"run_all_layers": False}, target="seed.py:Model")
    assert not any("different models" in n.message for n in diff_reports(seed, same).notes)


class _Reused(torch.nn.Module):
    """A block run twice, the second time in a reentrant checkpoint when asked (DDP then
    raises: its gradient arrives in two backward passes), or only in one."""

    def __init__(self, how: str = "plain", two_outputs: bool = False) -> None:
        super().__init__()
        self.how, self.two_outputs = how, two_outputs
        self.embed = torch.nn.Linear(4, 4)
        self.block = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)
        self.probe = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> Any:
        from torch.utils.checkpoint import checkpoint

        h = self.embed(x)
        if self.how == "only-recomputed":
            h = checkpoint(self.block, h, use_reentrant=True)
        else:
            h = self.block(h)
            reentrant = self.how == "reentrant"
            h = checkpoint(self.block, h, use_reentrant=True) if reentrant else self.block(h)
        if self.two_outputs:
            return self.head(h), self.probe(h)
        return self.head(h) + self.probe(h)


def _profile(model: torch.nn.Module, **options: Any) -> execorder.Report:
    return execorder.profile(model, inputs=torch.randn(2, 4), **options).report


def _changes(old: execorder.Report, new: execorder.Report) -> set[tuple[str, str, Any, Any]]:
    diff = diff_reports(old, new)
    assert not diff.equivalent
    return {(p.name, str(p.what), p.old, p.new) for p in diff.params}


def test_a_parameter_given_its_gradient_in_two_passes_now_is_a_change() -> None:
    plain, reentrant = _profile(_Reused()), _profile(_Reused("reentrant"))
    assert reentrant.split_gradients  # DDP raises on this model: tests/test_ddp.py
    assert _changes(plain, reentrant) == {
        ("block.weight", "backward passes", "1", "2"),
        ("block.bias", "backward passes", "1", "2"),
    }


def test_a_parameter_only_a_recompute_now_gives_a_gradient_is_a_change() -> None:
    changes = _changes(_profile(_Reused()), _profile(_Reused("only-recomputed")))
    assert ("block.weight", "now recompute only", "backward", "recompute only") in changes
    assert {c[0] for c in changes} == {"block.weight", "block.bias"}


def test_a_parameter_frozen_or_made_trainable_is_a_change() -> None:
    frozen = _Reused()
    frozen.probe.requires_grad_(False)
    changes = _changes(_profile(_Reused()), _profile(frozen))
    assert changes == {
        ("probe.weight", "became frozen", "trainable", "frozen"),
        ("probe.bias", "became frozen", "trainable", "frozen"),
    }
    again = diff_reports(_profile(frozen), _profile(_Reused()))
    back = {(p.name, str(p.what)) for p in again.params}
    assert back == {("probe.weight", "became trainable"), ("probe.bias", "became trainable")}


def test_a_parameter_now_reached_only_through_another_output_is_a_change() -> None:
    changes = _changes(_profile(_Reused()), _profile(_Reused(two_outputs=True)))
    assert changes == {
        ("probe.weight", "now other outputs only", "every output", "other outputs"),
        ("probe.bias", "now other outputs only", "every output", "other outputs"),
    }


def test_a_changed_gradient_order_is_a_change_when_both_recorded_it() -> None:
    class Two(torch.nn.Module):
        def __init__(self, swap: bool) -> None:
            super().__init__()
            self.swap = swap
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Both read x; the one applied last gets its gradient first.
            first, second = (self.b, self.a) if self.swap else (self.a, self.b)
            return second(first(x))

    old, new = _profile(Two(False), backward=True), _profile(Two(True), backward=True)
    moved = {p.name for p in diff_reports(old, new).params if str(p.what) == "moved in backward"}
    assert moved and moved <= {"a.weight", "a.bias", "b.weight", "b.bias"}
    unrecorded = _profile(Two(True))
    assert not [p for p in diff_reports(old, unrecorded).params if "backward" in str(p.what)]


def test_other_input_sizes_are_noted() -> None:
    old = execorder.profile(_Reused(), inputs=torch.randn(2, 4)).report
    new = execorder.profile(_Reused(), inputs=torch.randn(3, 4)).report
    diff = diff_reports(old, new)
    assert diff.equivalent  # the same execution, on other data
    (note,) = diff.notes
    assert str(note) == "inputs differ: arg0=float32[2, 4] -> arg0=float32[3, 4]"
    traced = execorder.trace(_Reused())  # fx: no inputs to compare
    assert not diff_reports(traced, traced).notes


class _Squares(torch.nn.Module):
    """The same calls and parameters either way; squaring saves its input for backward,
    doubling saves nothing, so the step's peak differs."""

    def __init__(self, square: bool) -> None:
        super().__init__()
        self.square = square
        self.lin = torch.nn.Linear(64, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return h * h if self.square else h + h


def _stepped(square: bool, device: str = "meta") -> tuple[execorder.Report, int]:
    """The report of a measured step, and the CPU allocator's peak over two real ones."""
    x = torch.randn(512, 64)
    build = lambda: _Squares(square)  # noqa: E731
    report = execorder.profile(build, inputs=x, device=device, memory="sgd").report
    model = build()
    step = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    run = lambda: models.train_two_steps(model, (x,), step)  # noqa: E731
    return report, models.allocator_peak((*model.parameters(), x), run)


def test_a_changed_peak_of_the_training_step_is_a_change(tmp_path: Path) -> None:
    (old, old_real), (new, new_real) = _stepped(False), _stepped(True)
    assert new_real > old_real  # the real steps: squaring holds more
    diff = diff_reports(old, new)
    assert diff.params == () and not diff.calls_changed and diff.notes == ()
    assert not diff.equivalent and diff.memory is not None
    assert (diff.memory.old.peak_bytes, diff.memory.new.peak_bytes) == (old_real, new_real)
    data = diff.to_dict()["memory"]
    assert data["new"]["peak_bytes"] == new_real and data["new"]["peak_at"]["name"] is not None
    assert data["new"]["at_peak"]["activations"] > data["old"]["at_peak"]["activations"]
    for name, report in (("old", old), ("new", new)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report.to_dict()))
    files = [str(tmp_path / "old.json"), str(tmp_path / "new.json")]
    result = CliRunner().invoke(app, ["diff", *files])
    assert result.exit_code == 1
    assert result.stdout.startswith("Changed: peak memory ")
    assert "Memory of a training step" in result.stdout
    assert "activations at the peak" in result.stdout


def test_the_same_peak_measured_elsewhere_is_no_change() -> None:
    (meta, _), (cpu, _) = _stepped(True), _stepped(True, device="cpu")
    diff = diff_reports(meta, cpu)  # meta measures what CPU holds
    assert diff.equivalent and diff.memory is None and diff.to_dict()["memory"] is None
    assert diff.notes == ()


def test_a_step_measured_in_one_report_only_or_otherwise_is_noted() -> None:
    def squares(memory: str | None) -> execorder.Report:
        build = lambda: _Squares(True)  # noqa: E731
        return execorder.profile(build, inputs=torch.randn(512, 64), memory=memory).report

    measured, plain = squares("sgd"), squares(None)
    diff = diff_reports(plain, measured)
    assert diff.equivalent and diff.memory is None
    (note,) = diff.notes
    assert str(note) == "memory measured in the new report only (sgd (foreach)): no peaks compared"
    (note,) = diff_reports(measured, plain).notes
    assert str(note).startswith("memory measured in the baseline only")
    diff = diff_reports(measured, squares("adamw"))
    assert not diff.equivalent  # AdamW's two states a parameter against SGD's one
    (note,) = diff.notes
    assert str(note) == "memory measured differently: sgd (foreach) -> adamw (foreach)"


def test_a_parameter_ddp_now_ignores_or_waits_for_is_a_change() -> None:
    """DDP neither waits for an ignored parameter nor all-reduces its gradient: either way
    it decides whether the job runs, and whether its ranks agree."""
    x = torch.ones(2, 4)
    old = execorder.profile(models.DdpIgnores, inputs=x).report
    new = execorder.profile(lambda: models.DdpIgnores(extra_ignored=True), inputs=x).report
    changes = _changes(old, new)
    assert changes == {
        ("extra.weight", "now ignored by DDP", "waited for", "ignored"),
        ("extra.bias", "now ignored by DDP", "waited for", "ignored"),
    }
    back = {(p.name, str(p.what)) for p in diff_reports(new, old).params}
    assert back == {
        ("extra.weight", "no longer ignored by DDP"),
        ("extra.bias", "no longer ignored by DDP"),
    }
