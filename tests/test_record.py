"""eager.record: a training step of the user's own, recorded, with the report built after."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import models
import pytest
import torch
from cases import CASES, Case
from seed import Model
from torch import nn
from transformer import Transformer

from execorder import eager
from execorder.backends.common import tensors
from execorder.errors import RecordingError


def _sum(outputs: Any) -> torch.Tensor:
    """The loss eager.trace(backward=True) uses: the sum of every output that requires grad."""
    outs = [t for t in tensors(outputs) if t.requires_grad]
    return torch.stack([t.float().sum() for t in outs]).sum()


def _restored(model: nn.Module) -> bool:
    return (
        all(type(p) is nn.Parameter for p in model.parameters())
        and not any("_call_impl" in vars(m) for m in model.modules())
        and not any(p._post_accumulate_grad_hooks for p in model.parameters())
    )


def _settled(case: Case) -> None:
    """Run a TorchScript case's steps until its executor is done profiling: it runs the
    graphs it optimized from then on, whose backward accumulates in another order than the
    first runs' (which run of the process is first depends on the tests run before)."""
    if case is CASES["torchscript"]:
        for _ in range(3):
            _sum(case.build()(*case.inputs())).backward()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_recorded_step_gives_the_report_of_trace_with_backward(case: Case) -> None:
    _settled(case)
    torch.manual_seed(0)
    model, args = case.build(), case.inputs()
    traced = eager.trace(model, args=args, kwargs=case.concrete_args, backward=True)
    torch.manual_seed(0)
    model = case.build()  # the same model afresh: a forward may switch parameters off
    with eager.record(model) as recording:
        outputs = model(*args, **case.concrete_args)
        if any(t.requires_grad for t in tensors(outputs)):
            _sum(outputs).backward()
    expected = traced.to_dict()
    # trace's backward is of every output, which it says; a step's own loss decides for itself.
    expected.pop("output_reach", None)
    assert recording.report().to_dict() == expected
    assert recording.report().output_reach is None
    assert _restored(model)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_without_a_backward_liveness_comes_from_the_graph(case: Case) -> None:
    torch.manual_seed(0)
    model, args = case.build(), case.inputs()
    with eager.record(model) as recording:
        model(*args, **case.concrete_args)
    report = recording.report()
    assert report.backward is None
    torch.manual_seed(0)
    model = case.build()  # the same model afresh: a forward may switch parameters off
    traced = eager.trace(model, args=args, kwargs=case.concrete_args)
    assert report.to_dict() == traced.to_dict()


def test_the_users_loss_decides_what_is_dead() -> None:
    """A loss on one head: the other head gets no gradient, as DDP would see it."""
    model = models.TwoHeads()
    with eager.record(model) as recording:
        policy, _ = model(torch.randn(3, 4))
        policy.sum().backward()
    report = recording.report()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_grad == ["value.weight", "value.bias"]
    assert [p.name for p in report.dead] == no_grad
    assert report.backward is not None
    assert set(report.backward) == {"body.weight", "body.bias", "policy.weight", "policy.bias"}


def test_the_calls_arguments_are_described() -> None:
    model = Model()
    with eager.record(model) as recording:
        model(torch.randn(2, 6), run_all_layers=True)
    report = recording.report(target="seed")
    assert report.target == "seed"
    assert dict(report.inputs) == {"arg0": "float32[2, 6]"}
    assert dict(report.concrete_args) == {"run_all_layers": True}


def test_a_second_call_inside_the_block_is_an_error() -> None:
    model = Transformer(n_layers=1)
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(RecordingError, match="called a second time"), eager.record(model):
        model(ids)
        model(ids)
    assert _restored(model)


def test_a_model_not_called_inside_the_block_has_no_report() -> None:
    model = Transformer(n_layers=1)
    with eager.record(model) as recording:
        model.forward(torch.zeros(1, 4, dtype=torch.long))  # not model(...): not recorded
    with pytest.raises(RecordingError, match=r"not called inside.*model\(\.\.\.\)"):
        recording.report()
    assert _restored(model)


def test_a_forward_that_raises_propagates_and_everything_is_restored() -> None:
    model = models.Raising()
    with pytest.raises(ValueError, match="boom in forward"), eager.record(model) as recording:
        model(torch.randn(2, 4))
    assert _restored(model)
    with pytest.raises(RecordingError, match="raised"):
        recording.report()


def test_the_report_waits_for_the_end_of_the_block() -> None:
    model = Transformer(n_layers=1)
    with eager.record(model) as recording:
        model(torch.zeros(1, 4, dtype=torch.long))
        with pytest.raises(RecordingError, match="once the record"):
            recording.report()
    assert recording.report().summary.calls > 1


def test_two_backwards_give_each_parameter_once_at_its_first_accumulation() -> None:
    model = Transformer(n_layers=1)
    with eager.record(model) as recording:
        loss = model(torch.zeros(1, 4, dtype=torch.long)).sum()
        loss.backward(retain_graph=True)
        loss.backward()
    report = recording.report()
    assert report.backward is not None
    assert len(report.backward) == len(set(report.backward))
    assert report.backward[0] == "head.weight"


def test_lazy_modules_must_have_run_before_recording() -> None:
    model = nn.Sequential(nn.LazyLinear(4))
    with pytest.raises(RecordingError, match="lazy modules"), eager.record(model):
        pass
    assert not any("_call_impl" in vars(m) for m in model.modules())


def test_recording_a_model_already_being_recorded_is_an_error() -> None:
    model = Transformer(n_layers=1)
    with eager.record(model) as outer:
        with pytest.raises(RecordingError, match="already being recorded"), eager.record(model):
            pass
        model(torch.zeros(1, 4, dtype=torch.long))
    assert outer.report().summary.calls > 1
    assert _restored(model)


def test_record_is_part_of_the_top_level_api() -> None:
    import execorder

    assert execorder.record is eager.record


def test_the_readme_example() -> None:
    """README, "Recording your own training step": the step and what it shows."""
    import torch.nn.functional as F

    import execorder

    model = Transformer(n_layers=2)
    ids = torch.randint(0, 64, (2, 16))
    with execorder.record(model) as recording:
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
    report = recording.report()
    assert report.backward is not None
    assert report.backward[:3] == ("head.weight", "norm.weight", "blocks.1.fc2.bias")
    assert dict(report.inputs) == {"arg0": "int64[2, 16]"}


def test_a_forward_under_no_grad_marks_nothing_dead() -> None:
    """No graph, no liveness: an evaluation step says nothing about gradients."""
    case = CASES["argmax-routing"]
    model, args = case.build(), case.inputs()
    traced = eager.trace(model, args=args, kwargs=case.concrete_args)
    assert traced.dead  # with autograd on, the router is dead
    with eager.record(model) as recording, torch.no_grad():
        model(*args, **case.concrete_args)
    report = recording.report()
    assert report.dead == ()
    assert report.backward is None
    assert [p.name for p in report.params] == [p.name for p in traced.params]


def test_a_recorded_step_diffs_cleanly_against_an_fx_baseline() -> None:
    """README: a report from record() goes through execorder diff like any other."""
    import execorder
    from execorder.analysis import diff_reports
    from execorder.report import Report

    model = Transformer(n_layers=2)
    baseline = execorder.trace(model)
    with execorder.record(model) as recording:
        model(torch.randint(0, 64, (2, 16))).sum().backward()
    recorded = Report.from_dict(recording.report().to_dict())
    assert diff_reports(baseline, recorded).equivalent


class LogitsLM(nn.Module):
    """A language model's step in small: forward returns its loss and its logits, and the
    loop keeps the loss alone, so the logits are free before backward starts."""

    vocab = 32000

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(self.vocab, 64)
        self.body = nn.Linear(64, 64)
        self.head = nn.Linear(64, self.vocab)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(torch.relu(self.body(self.embed(ids))))
        loss = nn.functional.cross_entropy(logits.view(-1, self.vocab), labels.view(-1))
        return {"loss": loss, "logits": logits}


def test_a_recorded_step_holds_no_more_memory_than_the_step() -> None:
    """MemTracker's peak of a real step, recorded and not: the same. Before, the recording
    kept forward's outputs through backward, the logits (62.5 MiB here; gigabytes for a
    large vocabulary and context) on top of the step's own peak."""
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = LogitsLM()
    ids, labels = (torch.randint(0, LogitsLM.vocab, (4, 128)) for _ in range(2))

    def peak(recorded: bool) -> int:
        model.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker, eager.record(model) if recorded else nullcontext():
            model(ids, labels)["loss"].backward()
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    assert peak(recorded=True) == peak(recorded=False)
