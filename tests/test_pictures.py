"""Pictures: the call tree, the Perfetto timeline, real per-module times."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import pytest
import torch
from cases import CASES, predict
from seed import Model
from torch import nn
from typer.testing import CliRunner

import execorder
import execorder.fsdp
from execorder.cli import app
from execorder.cli.words import CLI
from execorder.errors import ModeError, RecordingError, TimingDeviceError
from execorder.output.perfetto import FIRST_USE, FORWARD, UNITS, timeline
from execorder.output.terminal import draw, plain_text
from execorder.output.views import tree_view
from execorder.report import Report

GOLDEN = Callable[[str, str], None]


def tree_text(report: Report, **options: Any) -> str:
    return plain_text(draw(tree_view(report, **options)), width=100)


# -- the tree -------------------------------------------------------------------------


def test_the_seed_models_tree(golden: GOLDEN) -> None:
    report = execorder.profile(Model, concrete_args={"run_all_layers": True}).report
    golden("tree-seed.txt", tree_text(report))


@pytest.mark.slow
def test_eighty_identical_layers_fold_into_one_line(golden: GOLDEN) -> None:
    report = execorder.profile(
        "sample_models/llama.py:llama2_70b", input_size={"input_ids": "int64[1,32]"}
    ).report
    text = tree_text(report)
    golden("tree-llama70b.txt", text)
    assert "layers.0-79  DecoderLayer ×80, same calls" in text
    assert len(text.splitlines()) < 30  # 964 calls, one screen


def test_only_runs_of_identical_subtrees_in_index_order_fold() -> None:
    # a, b, a: the first two fold; the third call of a stays, marked.
    twice = tree_text(execorder.profile(models.UnitTwice, input_size=(2, 4)).report)
    assert "layers.0-1  Unit ×2, same calls" in twice
    assert "layers.0  Unit  (call 2)" in twice
    # Layers run 2, 0, 3, 1: no run of consecutive indices, nothing folds.
    permuted = tree_text(execorder.profile(models.Permuted, input_size=(2, 4)).report)
    assert "×" not in permuted
    # Siblings of one class whose subtrees differ (a dead use in one) do not fold.
    seed = tree_text(execorder.profile(Model, concrete_args={"run_all_layers": True}).report)
    assert "layer2.0  Linear  weight (dead)" in seed and "×" not in seed


def test_depth_and_max_rows_apply_to_the_tree() -> None:
    report = execorder.profile(Model, concrete_args={"run_all_layers": True}).report
    shallow = tree_text(report, depth=1)
    assert "layer2.0" not in shallow and "3 calls nested deeper than depth=1" in shallow
    short = tree_text(report, max_rows=4)
    assert len([line for line in short.splitlines() if "──" in line]) == 3
    assert "8 more lines (max_rows=0 shows all)" in short
    # The command line names its flags.
    assert "nested deeper than --depth 1" in tree_text(report, depth=1, words=CLI)
    assert "(--max-rows 0 shows all)" in tree_text(report, max_rows=4, words=CLI)


def test_fsdp_units_are_marked_on_the_tree() -> None:
    from encdec import EncoderDecoder

    plan, report = execorder.fsdp.plan_and_report(
        execorder.Profiler(EncoderDecoder, input_size="int64[2,16]@0:100")
    )
    text = tree_text(report, plan=plan)
    assert "encoder.0-1  Block ×2, same calls  [unit 1, gathers 33.7 KB]" in text
    assert "(root)  EncoderDecoder  [unit 0, gathers 26.0 KB]" in text


def test_a_deep_model_draws_every_level() -> None:
    report = execorder.eager.trace(models.nested(100), args=(torch.randn(2, 2),))
    assert len(tree_text(report).splitlines()) > 200  # 100 levels, each with its layer


# -- the timeline ---------------------------------------------------------------------


def check_trace(data: dict[str, Any], report: Report) -> list[dict[str, Any]]:
    """The Trace Event rules Perfetto holds a file to; the forward slices, checked."""
    assert set(data) >= {"traceEvents", "displayTimeUnit", "otherData"}
    events = data["traceEvents"]
    for event in events:
        assert {"ph", "pid", "name"} <= set(event)
        if event["ph"] == "X":
            assert isinstance(event["ts"], (int, float)) and event["dur"] >= 0
            assert {"tid", "cat", "args"} <= set(event)
        if event["ph"] == "i":
            assert event["s"] == "t" and isinstance(event["ts"], (int, float))
    slices = [e for e in events if e["ph"] == "X" and e["tid"] == FORWARD]
    assert len(slices) == len(report.modules)  # one slice per module call
    assert [e["args"]["call"] for e in slices] == [c.index for c in report.modules]
    # Perfectly nested: each slice lies inside its parent's, siblings do not overlap.
    for call, event in zip(report.modules, slices, strict=True):
        if call.parent is not None:
            outer = slices[call.parent]
            assert outer["ts"] <= event["ts"]
            assert event["ts"] + event["dur"] <= outer["ts"] + outer["dur"]
    for left, right in zip(report.modules, report.modules[1:], strict=False):
        if right.parent == left.parent:
            a, b = slices[left.index], slices[right.index]
            assert a["ts"] + a["dur"] <= b["ts"]
    firsts = [e for e in events if e["ph"] == "i" and e["tid"] == FIRST_USE]
    assert len(firsts) == len(report.params)
    return slices


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_makes_a_valid_nested_timeline(name: str) -> None:
    report = predict(CASES[name])
    data = json.loads(json.dumps(timeline(report)))
    check_trace(data, report)
    assert data["otherData"]["clock"].startswith("logical")


def test_a_timed_run_and_a_plan_make_a_timeline_with_real_times_and_units() -> None:
    from encdec import EncoderDecoder

    profiler = execorder.Profiler(
        EncoderDecoder, input_size="int64[2,16]@0:100", backward=True, timing=True
    )
    plan, report = execorder.fsdp.plan_and_report(profiler)
    data = timeline(report, plan=plan)
    slices = check_trace(data, report)
    assert data["otherData"]["clock"].startswith("real: cpu")
    assert report.timing is not None
    assert slices[0]["dur"] == pytest.approx(report.timing.calls[0].total_us)
    units = [e for e in data["traceEvents"] if e["ph"] == "X" and e["tid"] == UNITS]
    assert len(units) == sum(u.calls for u in plan.units)
    gradients = [e for e in data["traceEvents"] if e.get("cat") == "gradient"]
    assert [e["name"] for e in gradients] == list(report.backward or ())


# -- real times ---------------------------------------------------------------------------


class Uneven(nn.Module):
    """Three linear layers of very different cost, called in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(1024, 1024)
        self.medium = nn.Linear(1024, 128)
        self.small = nn.Linear(128, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(torch.relu(self.medium(torch.relu(self.big(x)))))


@pytest.mark.timing
def test_times_agree_with_torch_profiler() -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model, x = Uneven(), torch.randn(512, 1024)
    model(x)  # warm up both alike
    ours_runs, theirs_runs = [], []
    for _ in range(3):  # interleaved, the median of each: a shared machine drifts
        with execorder.record(model, timing=True) as recording:
            model(x)
        report = recording.report()
        assert report.timing is not None and report.timing.clock == "cpu"
        names = [c.name for c in report.modules]
        ours_runs.append([t.total_us for t in report.timing.calls])
        with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
            model(x)
        events = sorted(
            (e for e in prof.events() if e.name.startswith("nn.Module: ")),
            key=lambda e: e.time_range.start,
        )
        assert [e.name.split(": ")[1].rsplit("_", 1)[0] for e in events] == [
            c.type for c in report.modules
        ]
        theirs_runs.append([e.cpu_time_total for e in events])
    ours = {n: statistics.median(run[i] for run in ours_runs) for i, n in enumerate(names)}
    theirs = {n: statistics.median(run[i] for run in theirs_runs) for i, n in enumerate(names)}
    heaviest = ["big", "medium", "small"]
    assert sorted(heaviest, key=lambda n: -ours[n]) == sorted(heaviest, key=lambda n: -theirs[n])
    # The whole forward, timed both ways: within a factor of 2 (the profiler
    # adds its own overhead, and runs differ on a shared machine).
    assert 0.5 < ours[""] / theirs[""] < 2.0
    for call, times in zip(report.modules, report.timing.calls, strict=True):
        assert 0 <= times.self_us <= times.total_us
        if call.parent is not None:
            assert times.total_us <= report.timing.calls[call.parent].total_us


def test_untimed_recording_has_no_timing_and_its_json_is_unchanged() -> None:
    report = execorder.profile(Uneven(), inputs=torch.randn(2, 1024)).report
    assert report.timing is None and "timing" not in report.to_dict()
    timed = execorder.profile(Uneven(), inputs=torch.randn(2, 1024), timing=True).report
    again = Report.from_dict(json.loads(json.dumps(timed.to_dict())))
    assert again == timed


def test_timing_needs_a_device_where_forward_runs() -> None:
    with pytest.raises(TimingDeviceError, match="not meta"):
        execorder.profile(Uneven, input_size=(2, 1024), timing=True, device="meta")
    with pytest.raises(ModeError):
        execorder.profile(Uneven, timing=True, mode="fx")
    with torch.device("meta"):
        on_meta = Uneven()
    with (
        pytest.raises(RecordingError, match="meta device, where nothing runs"),
        execorder.record(on_meta, timing=True),
    ):
        pass
    built = execorder.profile(Uneven, input_size=(2, 1024), timing=True)
    assert built.device == "cpu"  # a timed model is built where it can run


# -- the command line ------------------------------------------------------------------------


def test_the_command_draws_trees_and_timelines(tmp_path: Path) -> None:
    runner = CliRunner()
    tree = runner.invoke(
        app, ["trace", "sample_models/seed.py:Model", "-c", "run_all_layers=true", "-f", "tree"]
    )
    assert tree.exit_code == 0, tree.output
    assert "(root)  Model  weight1 (dead), weight2 (dead)  unused: weight_unused" in tree.stdout
    out = tmp_path / "trace.json"
    args = ["trace", "sample_models/transformer.py:Transformer", "--input", "int64[2,16]@0:64"]
    timed = runner.invoke(app, [*args, "--timing", "-f", "perfetto", "-o", str(out)])
    assert timed.exit_code == 0, timed.output
    assert "open it at https://ui.perfetto.dev" in timed.stderr
    assert json.loads(out.read_text())["otherData"]["clock"].startswith("real: cpu")
    table = runner.invoke(app, [*args, "--timing"])
    assert "Slowest modules, by self time (cpu clock; forward took" in table.stdout
    fsdp = runner.invoke(
        app,
        [
            "fsdp",
            "sample_models/encdec.py:EncoderDecoder",
            "--input",
            "int64[2,16]@0:100",
            "-f",
            "tree",
        ],
    )
    assert "[unit 1, gathers 33.7 KB]" in fsdp.stdout


def test_formats_that_do_not_apply_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    sweep = runner.invoke(
        app,
        [
            "trace",
            "sample_models/seed.py:Model",
            "--sweep",
            "run_all_layers=true,false",
            "-f",
            "tree",
        ],
    )
    assert sweep.exit_code == 2 and "draws one report: not with --sweep" in sweep.stderr
    report = tmp_path / "r.json"
    made = ["trace", "sample_models/seed.py:Model", "-c", "run_all_layers=true", "-f", "json"]
    assert runner.invoke(app, [*made, "-o", str(report)]).exit_code == 0
    diff = runner.invoke(app, ["diff", str(report), str(report), "-f", "perfetto"])
    assert diff.exit_code == 2 and "--format perfetto applies to trace and fsdp" in diff.stderr
    timeline_file = tmp_path / "t.json"
    assert runner.invoke(app, [*made, "-f", "perfetto", "-o", str(timeline_file)]).exit_code == 0
    mistaken = runner.invoke(app, ["diff", str(timeline_file), str(report)])
    assert mistaken.exit_code == 2 and "not a trace report: a Perfetto timeline" in mistaken.stderr
    ranks = runner.invoke(
        app, ["ranks", "sample_models/seed.py:Model", "--nproc", "2", "-f", "tree"]
    )
    assert ranks.exit_code == 2 and "--format tree applies to trace and fsdp" in ranks.stderr
    fx = runner.invoke(app, ["trace", "sample_models/seed.py:Model", "--mode", "fx", "--timing"])
    assert fx.exit_code == 2 and "--timing needs --mode eager" in fx.stderr
