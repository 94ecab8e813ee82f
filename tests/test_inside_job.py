"""``record()`` inside real jobs, on gloo ranks under torchrun: the plain model's answer.

For each wrapper (FSDP2 per block and root, with and without resharding
after forward, nested units, checkpointing and per-block compile under
FSDP2 as torchtitan applies them, tensor parallelism, DDP and compiled DDP)
the recorded report equals the plain model's report field by field, and
agrees with the real thing: the plain model's calls seen by forward
pre-hooks, the parameters its real backward gave a gradient, and under
FSDP2 the sharded gradients FSDP2 itself set. A per-rank branch gives the
same comparison across 4 ranks wrapped and plain. transformers' Trainer and
Lightning, under DDP with ``find_unused_parameters=False``, fail at step 2
without the callback and stop at step 1 with the parameter's name with it.
The probe is tests/job_probe.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from execorder import load_report

pytestmark = pytest.mark.processes

HERE = Path(__file__).resolve().parent
PROBE = HERE / "job_probe.py"
WORLD = 2


def probe(mode: str, *args: str, world: int = WORLD) -> list[dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world}",
        str(PROBE),
        mode,
        *args,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the job probe ({mode}) did not finish in 240 s")
    assert done.returncode == 0, done.stderr[-4000:]
    # A trainer prints its own metrics as a Python dict: the probe's lines are JSON objects.
    lines = done.stdout.splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"rank"')]


def by_case(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in sorted(lines, key=lambda line: line["rank"]):
        found.setdefault(line["case"], []).append(line)
    return found


@pytest.fixture(scope="module")
def wrapped() -> dict[str, list[dict[str, Any]]]:
    return by_case(probe("wrappers"))


MATRIX = [
    "seed/fsdp/wrapper",
    "seed/fsdp-keep/wrapper",
    "seed/ddp/wrapper",
    "seed/ddp/model",
    "seed/compile-ddp/wrapper",
    "llama/fsdp/wrapper",
    "llama/fsdp/wrapper/forward-only",
    "llama/fsdp-keep/wrapper",
    "llama/fsdp-nested/wrapper",
    "llama/checkpoint-fsdp/wrapper",
    "llama/compile-blocks-fsdp/wrapper",
    "llama/tp/wrapper",
    "llama/ddp/wrapper",
    "llama-checkpointed/fsdp/wrapper",
    "llama-checkpointed/ddp/wrapper",
    "llama-frozen-block/fsdp/wrapper",
    "lora/fsdp/wrapper",
    "lora/ddp/model",
    "frozen/fsdp/wrapper",
    "frozen/ddp/wrapper",
    "tied/fsdp/wrapper",
    "reads-another-unit/fsdp-keep/wrapper",
    "seed/replicate/wrapper",
    "llama/replicate/wrapper",
    "frozen/replicate/wrapper",
    "seed/replicate-fsdp/wrapper",
    "llama/replicate-fsdp/wrapper",
    "frozen/replicate-fsdp/wrapper",
    "llama/hsdp/wrapper",
    "llama/fsdp-bf16/wrapper",
    "lora/fsdp-bf16/wrapper",
    "llama-checkpointed/fsdp-offload/wrapper",
    "frozen/fsdp-offload/wrapper",
    "llama/compile-fsdp/wrapper",
    "seed/compile-fsdp/wrapper",
    "llama/fsdp-tp/wrapper",
]


def test_every_wrapped_step_reports_what_the_plain_model_does(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    wrong = []
    for case in MATRIX:
        lines = wrapped.get(case, [])
        assert [line["rank"] for line in lines] == list(range(WORLD)), f"{case}: no result"
        for line in lines:
            assert "error" not in line, f"{case}, rank {line['rank']}: {line['error']}"
            assert line["used"] > 0, f"{case}: nothing used"
            if line["equal"] is not None:
                wrong.append(f"{case}, rank {line['rank']}, against plain: {line['equal']}")
            if line["truth"] is not None:
                wrong.append(f"{case}, rank {line['rank']}, against the real run: {line['truth']}")
    assert not wrong, "\n".join(wrong)


def test_a_unit_read_outside_its_forward_is_an_external_use_under_fsdp2(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """Unit layers.0 stays gathered (reshard_after_forward=False); the root reads its weight."""
    for line in wrapped["reads-another-unit/fsdp-keep/wrapper"]:
        assert line["external"] == ["layers.0.lin.weight"]


def test_the_recording_reads_ddps_settings(wrapped: dict[str, list[dict[str, Any]]]) -> None:
    for find_unused, static in ((False, False), (True, False), (False, True)):
        for line in wrapped[f"ddp-settings/{find_unused}/{static}"]:
            assert line["ddp"] == [find_unused, static]
    for line in wrapped["seed/fsdp/wrapper"]:
        assert line["ddp"] is None


def test_recording_a_step_of_a_compiled_ddp_job_leaves_the_job_as_it_was(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """Compiled code runs eagerly for the recorded step, and eager's graph lacks a parameter
    read with no gradient path, which the compiled graph holds and DDP waits for: before,
    the step after the recording failed a job that runs ("Expected to have finished
    reduction in the prior iteration"), and so too where forward returned its loss in a
    plain dataclass."""
    for name in ("distill", "distill-dataclass", "detached", "seed"):
        for how in ("ddp-compile", "compile-ddp"):
            for line in wrapped[f"compiled-ddp/{name}/{how}"]:
                case = f"{name}/{how}, rank {line['rank']}"
                if name == "seed":  # results discarded: the compiled graph drops those reads
                    assert line["plain_fails_at"] == line["fails_at"] == 1, case
                    continue
                assert line["plain_fails_at"] is None, f"{case}: the job fails by itself"
                assert line["fails_at"] is None, f"{case}: recording broke the job"
                assert line["same_grads"], f"{case}: the recorded step's gradients differ"
                assert line["held"], f"{case}: nothing rests on eager's graph"


def test_a_watch_stops_a_ddp_built_before_requires_grad_changed(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """DDP registers what requires grad when it is built. A block frozen after waits in vain
    (the next step fails, but for find_unused_parameters or static_graph); a block made
    trainable after is never all-reduced (every setting: the ranks' weights part, silently).
    The watch stops at step 1 exactly where the real job fails or parts."""
    for find_unused, static in ((False, False), (True, False), (False, True)):
        for change in ("frozen", "trainable", "swapped"):
            for line in wrapped[f"changed/{change}/{find_unused}/{static}"]:
                case = f"{change} after wrapping, find_unused={find_unused}, static={static}"
                broken = line["fails_at"] is not None or not line["replicas_agree"]
                if change == "swapped":  # DDP's own count cannot tell: the gradients do
                    assert broken and line["stopped"] is not None, case
                    assert line["stopped"] == (
                        "step 1: after DDP's all-reduce the ranks hold different gradients of "
                        "1 trainable parameter: 2.weight; DDP did not reduce a part of them (a "
                        "part from a backward that does not run through forward's outputs, "
                        "requires_grad set after DDP wrapped the model"
                        + (", a parameter that got no gradient in static_graph=True's first step")
                        * static
                        + "), so the ranks' replicas drift apart from here, with no error"
                    ), case
                    continue
                if change == "trainable":
                    assert line["fails_at"] is None and not line["replicas_agree"], case
                else:  # the step before it fails, DDP left the bucket it waits on unreduced
                    assert (line["fails_at"] == 2) == (not find_unused and not static), case
                    assert line["replicas_agree"] or line["fails_at"] == 2, case
                assert (line["stopped"] is not None) == broken, case
                if line["stopped"] is not None:
                    assert line["stopped"].startswith("step 1: DDP was built when "), case
                    assert (
                        "made trainable since, which DDP never all-reduces"
                        if change == "trainable"
                        else "frozen since, which DDP still waits for: it fails at the next step"
                    ) in line["stopped"], case


SEVERAL_BACKWARDS = [
    "shared",
    "apart",
    "one-output",
    "penalty",
    "decay-first",
    "decay-after",
    "batch-after",
]


def test_a_watch_stops_a_step_whose_backwards_ddp_does_not_reduce_as_one(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """A step that calls backward more than once over one forward (a loss on each head), or a
    gradient penalty's autograd.grad before the loss's backward, under each DDP setting:
    DDP raises in the step, fails at the next, or lets the ranks' weights part silently
    (static_graph too). The watch stops at step 1 exactly where the real job breaks, and
    says which of the two it is; a step that adds its losses first, or a penalty on the
    weights alone in a backward of its own, runs as it does unwatched."""
    broken = set()
    for name in [*SEVERAL_BACKWARDS, "summed"]:
        for find_unused, static in ((False, False), (True, False), (False, True)):
            case = f"backwards/{name}/{find_unused}/{static}"
            for line in wrapped[case]:
                fails = line["fails_at"] is not None or not line["replicas_agree"]
                if line["fails_at"] == 1:  # DDP raises in the step itself, watched or not
                    assert line["watched_fails_at"] == 1, case
                    continue
                assert line["watched_fails_at"] is None, f"{case}: the watch broke the job"
                stopped = line["stopped"]
                assert (stopped is not None) == fails, case
                if not fails:
                    continue
                broken.add(case)
                if name == "penalty":
                    assert "only after the first backward through forward's outputs" in stopped
                elif name == "batch-after":  # no part of forward's: the gradients tell
                    assert stopped.startswith("step 1: after DDP's all-reduce the ranks hold")
                else:
                    assert "(backward ran more than once over one forward)" in stopped, case
                    assert "(loss_a + loss_b).backward()" in stopped, case
    # Every kind of break is among them: a silent one under static_graph too.
    silent = ("apart/False/True", "penalty/False/True", "batch-after/False/False")
    for case in ("apart/True/False", *silent):
        assert f"backwards/{case}" in broken, case
    assert not any("summed" in case or "decay-after" in case for case in broken), broken


def test_the_ranks_copies_and_gradients_agree_in_a_healthy_step_under_every_ddp(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """No false alarm: DDP, compiled DDP and replicate() over the matrix's models, each rank
    on its own data, leave nothing unreduced for the watch to stop on."""
    cases = [case for case in wrapped if case.startswith("healthy/")]
    assert len(cases) >= 8, cases
    for case in cases:
        for line in wrapped[case]:
            assert line["replicas"] == [] and line["grads"] == [], line


def test_a_watch_stops_fsdp2_where_ranks_gave_different_parameters_a_gradient(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """FSDP2 reduces each unit's gradients as one buffer of those that got one. Two experts
    of one shape, rank r running expert r: the real step runs with no error, and every
    expert's sharded gradient on every rank is wrong (not the average of the ranks' own).
    The watch stops that step; with set_reduce_scatter_unused_params(True) the gradients
    are right, and the watch lets it run. No false alarm over the FSDP2 cases of the
    matrix, each rank on its own data, nor where FSDP2 reduces its zeros for a unit's
    unused input."""
    experts = ["experts.0.weight", "experts.0.bias", "experts.1.weight", "experts.1.bias"]
    for line in wrapped["fsdp-apart/False"]:
        assert line["wrong"] == [experts, experts], line
        assert line["stopped"][0] is None, line
        assert line["stopped"][1].startswith(
            "step 1: under FSDP2 the ranks gave gradients to different parameters: 4 trainable "
            f"parameters got one on some ranks and none on others: {', '.join(experts)};"
        ), line
    for line in wrapped["fsdp-apart/True"]:
        assert line["wrong"] == [[], []] and line["stopped"] == [None, None], line
    # Each expert on each rank over two micro-batches, the first unreduced: FSDP2 reduces
    # what it held from the first with the second's, and the gradients are right. The watch
    # of either micro-batch lets it be, and reports what that micro-batch ran, as the plain
    # model does: the expert it did not run is unused, though FSDP2 reduced what it held of
    # it from the first (before, FSDP2's running of its hooks counted as a gradient).
    for line in wrapped["fsdp-apart/accumulated"]:
        assert line["wrong"] == [] and line["stopped"] == [None, None], line
        first, second = (f"experts.{(line['rank'] + k) % 2}" for k in (0, 1))
        assert line["unused"] == [[f"{e}.weight", f"{e}.bias"] for e in (first, second)], line
    cases = [case for case in wrapped if case.startswith("healthy-fsdp/")]
    pairs = {tuple(case.split("/")[:2]) for case in MATRIX}  # each FSDP2 case of the matrix
    expected = {f"healthy-fsdp/{m}/{w}" for m, w in pairs if "fsdp" in w or w == "hsdp"}
    assert set(cases) == expected | {"healthy-fsdp/unit-takes-unused"}, cases
    for case in cases:
        for line in wrapped[case]:
            assert line["apart"] == [], line


def test_a_head_unused_in_static_graphs_first_step_drifts_and_the_gradients_tell(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """DDP(static_graph=True) takes what got no gradient in its first step as unused for good:
    a head that joins the loss from step 2 on is never all-reduced, and the ranks drift with
    no error. The watch of step 1 lets the job run (it warns); that of step 2 stops it on
    the gradients, and that of step 3 alone on the copies, which step 2 left apart."""
    for line in wrapped["static-later"]:
        assert line["fails_at"] is None and not line["replicas_agree"], line
        assert line["first"] is None, line
        assert line["second"].startswith(
            "step 2: after DDP's all-reduce the ranks hold different gradients of 1 trainable "
            "parameter: value.weight;"
        ), line
        assert line["third"].startswith(
            "step 3: the ranks' copies of 1 trainable parameter already differ: value.weight;"
        ), line


def test_a_head_that_leaves_the_loss_after_static_graphs_first_step_stops_the_watch(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """The reverse: a head in the loss in step 1 alone. DDP(static_graph=True) then waits for
    its gradient in every step, and fails at step 3, since step 2 gave it none. The watch of
    step 1 lets the job run; that of step 2 stops it, by DDP's own check of its reduction
    (before, the watch stopped only where find_unused_parameters=False, and let it pass)."""
    for line in wrapped["static-earlier"]:
        assert line["fails_at"] == 3 and line["first"] is None, line
        assert line["second"] == (
            f"step 2: 2 trainable parameters got no gradient on rank {line['rank']}: "
            "value.weight (DDP index 4), value.bias (DDP index 5); DDP (static_graph=True) fails "
            "on them at the next step: it took them for used in its first step, and waits for "
            'them in every step ("Expected to have finished reduction in the prior iteration"). '
            "Use them "
            "in every step, freeze them (requires_grad_(False)), or wrap the model with "
            "find_unused_parameters=True instead of static_graph=True"
        ), line


# job_probe.INSIDE: (find_unused_parameters, the blocks' idle layers, the head in a DDP)
INSIDE = [(False, True, False), (True, True, False), (False, False, True), (True, True, True)]


def test_a_watch_stops_where_a_ddp_inside_the_model_fails_or_leaves_ranks_apart(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """DDP put in each block's place, or replicate() on each block (and on the head, or not):
    not the model's DDP, so before, the watch never stopped where a block's DDP fails at step
    2, nor where the head, no DDP's, trains apart on each rank; and replicate()'s building of
    its DDP in a block's first call counted every parameter of the block as used."""
    idle_params = [f"blocks.{k}.idle.{w}" for k in (0, 1) for w in ("weight", "bias")]
    for how in ("ddp", "replicate"):
        for find_unused, idle, head in INSIDE:
            case = f"{how}/{find_unused}/{idle}/{head}"
            for line in wrapped[f"inside/{case}"]:
                fails = not find_unused and idle  # a block's idle layer; the spare is no DDP's
                assert line["fails_at"] == (2 if fails else None), case
                assert line["replicas_agree"] == head and line["watched_fails_at"] is None, case
                if fails:
                    assert line["stopped"] == (
                        f"step 1: 4 trainable parameters got no gradient on rank {line['rank']}: "
                        "blocks.0.idle.weight "
                        "(DDP index 2), blocks.0.idle.bias (DDP index 3), blocks.1.idle.weight "
                        "(DDP index 2), blocks.1.idle.bias (DDP index 3); the DDPs around "
                        "blocks.0 and blocks.1 (find_unused_parameters=False) fail on them at the "
                        'next step ("Expected to have finished reduction in the prior '
                        'iteration"). Use them in the loss, freeze them (requires_grad_(False)), '
                        "or wrap blocks.0 and blocks.1 with find_unused_parameters=True"
                    ), case
                elif not head:  # the head's bias gets the batch's size on every rank: alike
                    assert line["stopped"] == (
                        "step 1: the ranks hold different gradients or copies of 1 trainable "
                        "parameter that no DDP registers: head.weight; the DDPs around blocks.0 "
                        "and blocks.1 average only their own, so each rank trains these apart, "
                        "with no error. Wrap the model in one DDP, or freeze them"
                    ), case
                else:
                    assert line["stopped"] is None, case
            for line in wrapped[f"inside-report/{case}"]:
                assert line["unused"] == [*idle_params * idle, "spare.weight", "spare.bias"], case
                assert line["first_uses"] == [
                    f"{module}.{kind}"
                    for module in ("blocks.0.lin", "blocks.1.lin", "head")
                    for kind in ("weight", "bias")
                ], case
                modules = ["blocks.0", "blocks.1", *["head"] * head]
                assert [d[:3] for d in line["inside"]] == [
                    [name, find_unused, False] for name in modules
                ], case
                assert line["inside"][0][3] == [
                    "blocks.0.lin.weight",
                    "blocks.0.lin.bias",
                    *idle_params[:2] * idle,
                ], case


def test_a_ddps_sink_inside_the_model_leaves_what_it_passes_no_gradient_dead(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """DDP(find_unused_parameters=True) around an encoder whose second output the model does
    not read: its sink runs that output's accumulators with no gradient. Before, the report
    said they got one (with a backward), or were reached (without)."""
    for backward in (True, False):
        for line in wrapped[f"inside-sink/{backward}"]:
            assert line["equal"] is None, (backward, line["equal"])
            assert line["dead"] == ["enc.value.weight", "enc.value.bias"], backward
            if backward:
                assert line["graded"] == [
                    "enc.policy.bias",
                    "enc.policy.weight",
                    "head.bias",
                    "head.weight",
                ]


def test_a_function_that_passes_no_gradient_runs_under_ddp_and_the_watch_lets_it(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """DDP counts an accumulator run with no gradient ready: the job runs, and a watch that
    took b for a parameter without a gradient would stop a job that runs."""
    for line in wrapped["passes-none"]:
        assert line["fails_at"] is None and line["replicas_agree"], line
        assert line["watched_fails_at"] is None and line["stopped"] is None, line


def test_a_recorded_step_peaks_where_the_step_does_under_fsdp2_and_ddp(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """PyTorch's MemTracker under DDP, to the byte; its FSDPMemTracker under FSDP2, whose
    peak on gloo varies by a few KB from run to run (the probe says why): below what
    holding any unit's unsharded parameters would add."""
    for line in wrapped["memory/ddp"]:
        assert line["recorded"] == line["plain"] > 0, line
    for wrapper in ("fsdp", "fsdp-keep"):
        for line in wrapped[f"memory/{wrapper}"]:
            assert line["plain"] > 0 and line["unit"] > 8_000, (wrapper, line)
            assert abs(line["recorded"] - line["plain"]) < line["unit"], (wrapper, line)


def test_a_watch_records_the_micro_batch_ddp_reduces_under_gradient_accumulation(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """Under no_sync() each rank sums its own gradients, which DDP reduces with the synced
    micro-batch's: the watch sees the first as unsynced (not gradients DDP failed to
    reduce), records the synced one again(), and stops there on a part DDP leaves out."""
    for line in wrapped["accumulated/False"]:
        assert line["unsynced"] == [True, False] and line["stopped"] is None, line
        assert line["agree"], line
    for line in wrapped["accumulated/True"]:
        assert line["unsynced"] == [True, False], line
        assert line["stopped"].startswith(
            "step 1: after DDP's all-reduce the ranks hold different gradients of 1 trainable "
            "parameter: value.weight;"
        ), line


def test_a_watch_stops_the_rank_that_gave_a_parameter_no_gradient_alone() -> None:
    """One rank uses a head the other does not, under DDP(find_unused_parameters=False): the
    job fails at step 2 on that rank, whose DDP never sent the head's all-reduce, for which
    the other waits in backward. The watch stops that rank at step 1, naming the head by the
    indices DDP's own error gives, and sends nothing: before, its check across ranks paired
    with the other rank's all-reduce of gradients, and gloo aborted on the size ("Is there a
    distributed collective mismatch in your code?")."""
    plain = {line["rank"]: line for line in probe("apart", "plain")}
    watched = {line["rank"]: line for line in probe("apart", "watched")}
    assert (plain[1]["step"], plain[1]["error"]) == (2, "RuntimeError"), plain[1]
    assert plain[1]["message"].startswith("Expected to have finished reduction"), plain[1]
    assert (watched[1]["step"], watched[1]["error"]) == (1, "NoGradientError"), watched[1]
    assert watched[1]["params"] == ["aux_head.weight", "aux_head.bias"], watched[1]
    assert watched[1]["indices"] == plain[1]["indices"], (watched[1], plain[1])
    assert "got no gradient on rank 1:" in watched[1]["message"], watched[1]
    # Recorded and compared across ranks (ranks.md's lines): rank 1 sends nothing, where
    # before its comparison's all-gather and rank 0's all-reduce waited on each other for
    # the process group's timeout (gloo's default: 30 minutes).
    compared = {line["rank"]: line for line in probe("apart", "compared")}
    assert (compared[1]["step"], compared[1]["error"]) == (1, "DdpWaitingError"), compared[1]
    assert compared[1]["params"] == ["aux_head.weight", "aux_head.bias"], compared[1]
    # Rank 0 waits in step 1's backward each time, until rank 1 leaves.
    for line in (plain[0], watched[0], compared[0]):
        assert (line["step"], line["error"]) == (1, "RuntimeError"), line
        assert "gloo" in line["message"], line  # the peer left


def test_outputs_the_loss_does_not_read_give_no_gradient_under_ddps_sink(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """A DDP searching for unused parameters (or building its static graph) passes outputs
    through its _DDPSink, whose backward runs the accumulators an unread output reaches, with
    no gradient: before, the report said the unread head got one, and so that
    find_unused_parameters=False would run where it fails. replicate() (torch's composable
    DDP) applies the sink inside the model's own call: its outputs are the sink's, and a walk
    of one of them goes through it to that one alone."""
    settings = [("ddp", True, False), ("ddp", False, True), ("replicate", True, False)]
    for how, find_unused, static in settings:
        for forward in ("", "/forward"):  # a forward alone: each output walked on its own
            for line in wrapped[f"unread/{how}/{find_unused}/{static}{forward}"]:
                case = f"{how}, find_unused={find_unused}, static={static}{forward}"
                case += f", rank {line['rank']}"
                assert line["equal"] is None, f"{case}, against plain: {line['equal']}"
                assert line["truth"] is None, f"{case}, against the real run: {line['truth']}"


def test_an_input_a_unit_takes_but_does_not_use_gives_no_gradient_under_fsdp2(
    wrapped: dict[str, list[dict[str, Any]]],
) -> None:
    """FSDP2's Function on a unit's inputs fills zeros for an input no gradient came to, and
    autograd runs on into what computed it: the real FSDP2 step sets zeros where the plain
    model's backward sets nothing. The report is the plain model's: that is dead."""
    for line in wrapped["unread/fsdp"]:
        assert line["plain_side"] is None and line["fsdp_side"] == 0.0  # the real runs
        assert line["equal"] is None, f"rank {line['rank']}, against plain: {line['equal']}"
        assert line["dead"] == ["side.weight", "side.bias"]


def test_fsdp1_is_refused(wrapped: dict[str, list[dict[str, Any]]]) -> None:
    for line in wrapped["fsdp1"]:
        assert "Model is sharded with FSDP1" in line["error"]


def test_ranks_that_saw_no_use_do_not_agree(wrapped: dict[str, list[dict[str, Any]]]) -> None:
    """functional_call runs forward on copies: the report says so, and compare does not agree."""
    for line in wrapped["copies"]:
        assert line["no_use_seen"] is True
        assert [g["error"] for g in line["groups"]] == [
            "no parameter was seen used while forward ran"
        ]


def test_a_per_rank_branch_is_found_alike_wrapped_and_plain() -> None:
    """On 4 ranks: rank 0 alone takes the image branch; ranks 1 to 3 are one group."""
    cases = by_case(probe("compare", world=4))
    assert set(cases) == {
        "plain",
        "plain-forward-only",
        "fsdp",
        "ddp",
        "compile",
        "checkpoint",
        "tp",
    }
    for name, lines in cases.items():
        plain = cases["plain" if lines[0]["backward"] else "plain-forward-only"]
        for line, reference in zip(lines, plain, strict=True):
            assert {k: v for k, v in line.items() if k != "case"} == {
                k: v for k, v in reference.items() if k != "case"
            }, name
    first = cases["plain"][0]
    assert [g["ranks"] for g in first["groups"]] == [[0], [1, 2, 3]]
    assert first["diverged"] and first["first_divergence"] == {
        "call": 3,
        "by_group": ["vision", "head"],
    }


@pytest.mark.parametrize("kind", ["transformers", "lightning"])
def test_a_trainer_stops_at_the_recorded_step_where_ddp_fails_at_step_2(
    kind: str, tmp_path: Path
) -> None:
    if kind == "lightning":
        pytest.importorskip("lightning", reason="Lightning is an optional extra")
    cases = by_case(probe(kind, str(tmp_path)))
    prefix = "net." if kind == "lightning" else ""
    for line in cases[f"{kind}/plain"]:
        # Without the callback DDP fails at step 2 (Lightning rewords DDP's message).
        assert line["steps"] == 1 and line["error"] == "RuntimeError"
        assert "not used in producing" in line["message"]
    for line in cases[f"{kind}/callback"]:
        assert line["steps"] == 0 and line["error"] == "NoGradientError"
        assert line["message"].startswith(
            f"step 1: 2 trainable parameters got no gradient on rank {line['rank']}: "
            f"{prefix}aux_head.weight"
        )
    for rank in range(WORLD):
        report = load_report(tmp_path / f"{kind}-callback-step1-rank{rank}.json")
        assert [p.name for p in report.no_grad()] == [
            f"{prefix}aux_head.weight",
            f"{prefix}aux_head.bias",
        ]
    for line in cases[f"{kind}/compare"]:
        # Rank 0 alone uses aux_head: step 2, the first compared, stops the run on every rank.
        assert line["steps"] == 1 and line["error"] == "RanksDivergedError"
        assert f"rank 0 ran {prefix}aux_head; rank 1 had ended" in line["message"]
    # Two micro-batches a step, the first under DDP's no_sync(): the one DDP reduces decides.
    # The head in the first alone fails at step 2, and the callback stops step 1; in the
    # last alone the job runs, and so does the callback's (recording the first, it did not).
    for line in cases[f"{kind}/aux-first/plain"]:
        assert line["steps"] == 1 and line["error"] == "RuntimeError", line
    for line in cases[f"{kind}/aux-first/callback"]:
        assert line["steps"] == 0 and line["error"] == "NoGradientError", line
        assert line["message"].startswith(
            f"step 1: 2 trainable parameters got no gradient on rank {line['rank']}: "
            f"{prefix}aux_head.weight"
        )
    for line in [*cases[f"{kind}/aux-last/plain"], *cases[f"{kind}/aux-last/callback"]]:
        assert line["steps"] == 3 and line["error"] is None, line
