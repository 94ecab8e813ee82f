"""The event sink: replaying a log is the same as delivering its events one by one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from cases import CASES, Case
from torch import nn

from execorder.backends.eager_intercept import intercepting
from execorder.recording import (
    Checkpointed,
    Event,
    InputWrite,
    Recorder,
    UnseenBackward,
    build_report,
    module_tree,
)
from execorder.report import Mode


def _log(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Event]:
    """The eager backend's event log of one forward."""
    tree = module_tree(model)
    events: list[Event] = []
    with intercepting(model, tree, events):
        model(*args, **kwargs)
    return events


def _one_by_one(recorder: Recorder, events: list[Event]) -> None:
    for event in events:
        if event is None:
            recorder.exit(recorder.current.module)
        elif isinstance(event, list):
            recorder.use(event)
        elif isinstance(event, Checkpointed):
            recorder.checkpointed(event.start, event.by)
        elif isinstance(event, UnseenBackward):
            recorder.unseen_backward(event)
        elif isinstance(event, InputWrite):
            recorder.input_write()
        else:
            recorder.enter(event)


def _state(recorder: Recorder) -> object:
    """Everything the report builder reads, with objects as identities."""
    calls = [
        (
            id(c.module),
            c.parent,
            c.depth,
            c.slot_in_parent,
            [(id(g.module), [id(p) for p in g.params], g.whole_module) for g in c.groups],
        )
        for c in recorder.calls
    ]
    order = [id(p) for p in recorder.param_order]
    unseen = [(i, e.function, [id(p) for p in e.params]) for i, e in recorder.unseen_backwards]
    own = recorder.own_checkpoints
    writes = recorder.input_writes
    return (
        calls,
        order,
        recorder.first_call,
        recorder.observed,
        unseen,
        recorder.recomputed,
        own,
        writes,
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_replay_equals_the_events_one_by_one(case: Case) -> None:
    torch.manual_seed(0)
    model = case.build()
    events = _log(model, case.inputs(), case.concrete_args)
    replayed, stepped = Recorder(model), Recorder(model)
    replayed.replay(events)
    _one_by_one(stepped, events)
    assert _state(replayed) == _state(stepped)
    built = [build_report(r, target="t", mode=Mode.EAGER) for r in (replayed, stepped)]
    assert built[0] == built[1]


def test_the_seed_log_has_every_kind_of_event() -> None:
    case = CASES["seed-all-layers"]
    events = _log(case.build(), case.inputs(), case.concrete_args)
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["Linear", "list", "NoneType"]  # layer0 starts, uses, ends
    assert kinds.count("NoneType") == sum(isinstance(e, nn.Module) for e in events) == 11


def test_an_op_whose_parameters_were_not_found_adds_no_group() -> None:
    """An empty use (parameters nested too deep to see) is no use, on both paths."""
    model = nn.Sequential(nn.Linear(2, 2))
    weight = model[0].weight
    events: list[Event] = [model[0], [], [weight], [weight, weight], None]
    replayed, stepped = Recorder(model), Recorder(model)
    replayed.replay(events)
    _one_by_one(stepped, events)
    assert _state(replayed) == _state(stepped)
    groups = replayed.calls[1].groups
    assert [len(g.params) for g in groups] == [1, 1]


def test_an_unbalanced_log_is_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="leaves module calls open"):
        Recorder(model).replay([model[0]])
    with pytest.raises(RuntimeError, match="does not match"):
        Recorder(model).exit(model[0])
