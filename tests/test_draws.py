"""Choices forward makes from values it draws at random (LayerDrop): one run is one draw.

transformers' wav2vec2, HuBERT, WavLM, Data2Vec-Audio, SEW and UniSpeech train
with LayerDrop by default: each block runs only if ``torch.rand([]) >=
layerdrop``. A run that drew every block said "DDP check ok", and real DDP
fails the step after one that skips a block; FSDP2's ranks, drawing apart,
wait on each other's all-gathers. tests/draws_probe.py runs the jobs.
"""

from __future__ import annotations

import random
import tempfile
from importlib.util import find_spec
from random import random as bound_random
from random import uniform

import models
import pytest
import torch
import torch.distributed as dist
from conftest import run_probe
from torch import nn

import execorder
from execorder.output.views import ddp_verdict
from execorder.report import AssumptionKind, Category

SEEDS = range(12)


def verdict(report: execorder.Report) -> str:
    return ddp_verdict(report).cells[1].text


@pytest.mark.parametrize("mode", ["eager", "fx"])
def test_a_layerdrop_run_never_says_ddp_is_ok(mode: str) -> None:
    for seed in SEEDS:
        size = {"input_size": (2, 4)} if mode == "eager" else {}
        report = execorder.profile(models.LayerDrop, mode=mode, seed=seed, **size).report
        drawn = report.assumed(AssumptionKind.DRAWN)
        assert [(a.op, a.module, a.count) for a in drawn] == [("torch.rand", "", 4)]
        assert drawn[0].where.startswith("models.py:")
        layers = {p.name for p in report.all_params() if p.name.startswith("layers.")}
        assert layers <= {p.name for p in report.on_assumption}
        said = verdict(report)
        if report.no_use_seen:  # a draw that skipped every layer
            assert said.startswith("not proven:"), said
        elif report.summary.params_unused:
            assert said.startswith("fails:") and "a random draw decides" in said, said
        else:
            assert said.startswith("not proven:") and "LayerDrop" in said, said
        # The gate on unused parameters fails on what rests on the draw, as DDP does.
        assert report.failing((Category.UNUSED,))


@pytest.mark.parametrize("mode", ["eager", "fx"])
def test_a_draw_that_runs_every_layer_is_not_proven(mode: str) -> None:
    """What said "ok" before: every layer ran, and the next step may skip one."""
    size = {"input_size": (2, 4)} if mode == "eager" else {}
    for seed in range(200):
        report = execorder.profile(models.LayerDrop, mode=mode, seed=seed, **size).report
        if report.summary.params_used == report.summary.params_total:
            break
    else:
        pytest.fail("no seed of 200 runs every layer")
    said = verdict(report)
    assert said.startswith("not proven:") and "LayerDrop" in said, said


@pytest.mark.parametrize("mode", ["eager", "fx"])
def test_a_draw_from_pythons_random_is_a_choice_and_seeded(mode: str) -> None:
    """transformers 4 drew LayerDrop with random.uniform(0, 1): a run keeping every layer said
    "DDP check ok", and real DDP fails at step 3 (the probe's pyddp-alike job, seed 5)."""
    size = {"input_size": (2, 4)} if mode == "eager" else {}
    random.seed(1234)
    state = random.getstate()
    runs = [execorder.profile(models.PythonLayerDrop, mode=mode, seed=5, **size) for _ in "ab"]
    assert random.getstate() == state  # the user's generator is left as it was
    first, again = (run.report for run in runs)
    assert first.summary.params_used == first.summary.params_total == 8
    assert again.to_dict() == first.to_dict()  # --seed seeds Python's random too
    drawn = first.assumed(AssumptionKind.DRAWN)
    assert [(a.op, a.count) for a in drawn] == [("random.uniform", 4)]
    assert drawn[0].where.startswith("models.py:")
    said = verdict(first)
    assert said.startswith("not proven:") and "LayerDrop" in said, said


class BoundDrop(nn.Module):
    """LayerDrop by a function of ``random`` bound before the run (``from random import``):
    ``uniform`` is seen where it is called, as its generator's ``random`` method draws;
    ``random`` itself (``bound=True``) only as the generator's state moving."""

    def __init__(self, bound: bool = False) -> None:
        super().__init__()
        self.bound = bound
        self.layers = nn.ModuleList(models.Unit(4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if (bound_random() if self.bound else uniform(0, 1)) >= 0.5:
                x = layer(x)
        return x


@pytest.mark.parametrize("mode", ["eager", "fx"])
def test_a_draw_by_a_function_bound_before_the_run_is_a_choice(mode: str) -> None:
    size = {"input_size": (2, 4)} if mode == "eager" else {}
    line = f"test_draws.py:{BoundDrop.forward.__code__.co_firstlineno + 2}"
    for bound, seen in (
        (False, [("random.uniform", line, 4)]),
        (True, [("random's generator", "", 1)]),
    ):
        report = execorder.profile(
            BoundDrop, mode=mode, seed=5, init_kwargs={"bound": bound}, **size
        ).report
        assert report.summary.params_used == 8  # seed 5 keeps every layer
        drawn = report.assumed(AssumptionKind.DRAWN)
        assert [(a.op, a.where, a.count) for a in drawn] == seen
        assert not any(a.own_generator for a in drawn)  # the seed sets random's generator
        assert report.summary.params_on_assumption == 8
        assert verdict(report).startswith("not proven:")


class NumpyDrop(nn.Module):
    """Skips its second layer when NumPy's global generator says so."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        x = self.first(x)
        return self.second(x) if np.random.rand() < 0.5 else x


def test_a_draw_from_numpys_global_generator_is_a_choice_and_seeded() -> None:
    np = pytest.importorskip("numpy")
    reports = [execorder.profile(NumpyDrop, input_size=(2, 4), seed=s).report for s in (0, 0, 1)]
    assert reports[0].to_dict() == reports[1].to_dict()
    for report in reports:
        assert [a.op for a in report.assumed(AssumptionKind.DRAWN)] == ["numpy.random.rand"]
        assert not verdict(report).startswith("ok")
    assert np.random.rand is np.random.mtrand.rand  # given back after the run


@pytest.mark.parametrize("mode", ["eager", "fx"])
def test_a_draw_from_a_generator_of_the_models_own_is_a_choice(mode: str) -> None:
    """``self.rng = random.Random(5)`` keeps every layer in its first four draws: the run
    said 'DDP check ok' (real DDP fails at step 3: draws_probe's ``ownddp-alike``)."""
    size = {"input_size": (2, 4)} if mode == "eager" else {}
    report = execorder.profile(models.OwnRandomLayerDrop, mode=mode, **size).report
    assert report.summary.params_used == report.summary.params_total == 8
    drawn = report.assumed(AssumptionKind.DRAWN)
    line = models.OwnRandomLayerDrop.forward.__code__.co_firstlineno + 2
    assert [(a.op, a.where, a.module, a.count) for a in drawn] == [
        ("rng.uniform", f"models.py:{line}", "", 4)
    ]
    assert drawn[0].own_generator and drawn[0].to_dict()["own_generator"] is True
    assert report.summary.params_on_assumption == 8
    assert verdict(report).startswith("not proven:")


class Schedule:
    """A helper of the model's file holding its generator: no module of the model holds it."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def keeps(self) -> bool:
        return self.rng.random() >= 0.5


def closure_draw(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return lambda: rng.random() >= 0.5


class HeldElsewhereDrop(nn.Module):
    """LayerDrop from a generator held by a helper object, a closure, the class, a dict, or
    made in forward (which no scan finds: the draw is seen as the model's code calls it)."""

    shared = random.Random(5)

    def __init__(self, held: str = "helper") -> None:
        super().__init__()
        self.held = held
        self.schedule, self.keeps = Schedule(5), closure_draw(5)
        self.generators = {"drop": random.Random(5)}
        self.layers = nn.ModuleList(models.Unit(4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.held == "helper":
                keep = self.schedule.keeps()
            elif self.held == "closure":
                keep = self.keeps()
            elif self.held == "dict":
                keep = self.generators["drop"].random() >= 0.5
            elif self.held == "made":
                keep = random.Random(5).random() >= 0.5
            else:
                keep = self.shared.random() >= 0.5
            x = layer(x) if keep else x
        return x


@pytest.mark.parametrize("mode", ["eager", "fx"])
@pytest.mark.parametrize(
    ("held", "name"),
    [
        ("helper", "schedule.rng"),
        ("closure", "keeps.rng"),
        ("class", "HeldElsewhereDrop.shared"),
        ("dict", "generators['drop']"),
        ("made", "random.Random"),
    ],
)
def test_a_generator_held_anywhere_by_the_models_code_is_seen(
    mode: str, held: str, name: str
) -> None:
    """Before, only one a module or the file's globals held was seen: 'DDP check ok'. Each
    draw is seen where it is made, its generator named where the scan finds it."""
    size = {"input_size": (2, 4)} if mode == "eager" else {}
    report = execorder.profile(
        HeldElsewhereDrop, mode=mode, init_kwargs={"held": held}, **size
    ).report
    drawn = report.assumed(AssumptionKind.DRAWN)
    assert [(a.op, a.count, a.own_generator) for a in drawn] == [(f"{name}.random", 4, True)]
    assert drawn[0].where.startswith("test_draws.py:")
    assert verdict(report).startswith("not proven:")  # Random(5) keeps every layer


class DrawsThroughALibrary(nn.Module):
    """Forward calls library code that draws from the library's own generator (tempfile's
    names): not the model's choice."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        next(tempfile._get_candidate_names())  # type: ignore[attr-defined]
        return self.layer(x)


def test_a_librarys_own_generator_is_not_the_models() -> None:
    report = execorder.profile(DrawsThroughALibrary, input_size=(2, 4)).report
    assert not report.assumptions and verdict(report).startswith("ok")
    assert "random" not in vars(random.Random) and "uniform" in vars(random.Random)


class TorchGeneratorDrop(nn.Module):
    """LayerDrop drawn with ``generator=``: the model's own torch.Generator, or torch's."""

    def __init__(self, own: bool) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(5) if own else torch.default_generator
        self.layers = nn.ModuleList(models.Unit(4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if torch.rand((), generator=self.generator) >= 0.5:
                x = layer(x)
        return x


@pytest.mark.parametrize("own", [True, False])
def test_a_torch_generator_of_the_models_own_is_not_set_by_the_seed(own: bool) -> None:
    from execorder.output.terminal import plain_text, render_report

    report = execorder.profile(
        TorchGeneratorDrop, input_size=(2, 4), init_kwargs={"own": own}
    ).report
    drawn = report.assumed(AssumptionKind.DRAWN)
    assert [a.op for a in drawn] == ["torch.rand"] and drawn[0].own_generator is own
    said = " ".join(plain_text(render_report(report), width=200).split())
    assert ("of seed 0" in said) is not own
    assert ("the model's own generator, which the seed does not set" in said) is own


def test_the_report_says_a_number_drawn_cannot_be_followed_and_a_tensor_drawn_can() -> None:
    from execorder.output.terminal import plain_text, render_report

    def said(model: type[nn.Module]) -> str:
        report = execorder.profile(model, input_size=(2, 4)).report
        return " ".join(plain_text(render_report(report), width=200).split())

    assert "is a number that cannot be followed" in said(models.OwnRandomLayerDrop)
    assert "is a number that cannot be followed" in said(models.PythonLayerDrop)
    assert "is a number that cannot be followed" not in said(models.LayerDrop)


class GlobalGeneratorDrop(nn.Module):
    """Skips its second layer when a NumPy ``Generator`` of its file's globals says so."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        return self.second(x) if GENERATORS["numpy"].random() < 2.0 else x


class HoldsAnUnusedGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rng, self.layer = random.Random(0), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


GENERATORS: dict[str, object] = {}


def test_a_numpy_generator_in_the_models_globals_is_seen_and_an_idle_one_is_not() -> None:
    np = pytest.importorskip("numpy")
    global NUMPY_RNG
    for kind in (np.random.default_rng, np.random.RandomState):
        NUMPY_RNG = GENERATORS["numpy"] = kind(0)
        report = execorder.profile(GlobalGeneratorDrop, input_size=(2, 4)).report
        drawn = [a.op for a in report.assumed(AssumptionKind.DRAWN)]
        assert drawn == ["test_draws.NUMPY_RNG's generator"], kind
        assert verdict(report).startswith("not proven:")
    report = execorder.profile(HoldsAnUnusedGenerator, input_size=(2, 4)).report
    assert not report.assumptions and verdict(report).startswith("ok")


def test_the_check_names_the_random_choice_in_the_fsdp2_plan() -> None:
    import execorder.fsdp

    plan = execorder.fsdp.plan(models.LayerDrop(), input_size=(2, 4))
    (check,) = [c for c in plan.checks if c.kind.value == "random-choice"]
    assert check.assumed == (("torch.rand", ""),)


class Noisy(nn.Module):
    """Dropout and noise it adds: random values, but no choice made from them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.1 * torch.randn_like(x)
        return self.drop(self.fc(x))


class DropsTokens(nn.Module):
    """Keeps a random half of the tokens for its second layer (a boolean mask as an index)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(x.shape[0]) > 0.5
        return self.first(x).sum() + self.second(x[keep]).sum()


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_noise_and_dropout_are_no_choice(device: str) -> None:
    report = execorder.profile(Noisy, input_size=(2, 4), device=device).report
    assert not report.assumptions and verdict(report).startswith("ok")


def test_a_random_mask_as_an_index_is_a_choice() -> None:
    report = execorder.profile(DropsTokens, input_size=(6, 4), device="cpu").report
    assert [a.op for a in report.assumed(AssumptionKind.DRAWN)] == ["torch.rand"]


def test_forward_draws_only_while_recorded() -> None:
    """torch's random functions are themselves again after a run, and no mode is left."""
    before = (torch.rand, torch.Tensor.bernoulli_, random.uniform)
    execorder.profile(models.LayerDrop, input_size=(2, 4))
    assert (torch.rand, torch.Tensor.bernoulli_, random.uniform) == before
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.processes
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)
def test_a_step_that_chooses_otherwise_fails_real_ddp_and_parts_fsdp2s_ranks(
    tmp_path: object,
) -> None:
    jobs = ["ddp-apart", "ddp-alike", "fsdp-apart", "fsdp-alike", "ddp-alike-watched"]
    jobs += ["pyddp-alike", "ownddp-alike", "helperddp-alike-watched", "moe-ddp", "moe-ddp-watched"]
    jobs += ["moe-fsdp", "moe-fsdp-watched"]
    switch = ["switch-fsdp-watched"] if find_spec("transformers") else []
    every = run_probe("draws_probe.py", f"{tmp_path}/store", *jobs, *switch, timeout=200)
    after = [line for line in every if "after" in line]  # a line after step 1, then the end
    ended = [line for line in every if line["job"] in switch and "after" not in line]
    found = {(line["job"], line["rank"]): line for line in every if line["job"] in jobs}
    assert {job for job, _ in found} == set(jobs)
    for job in jobs[:5]:  # the first step runs every layer
        assert found[job, 0]["first"] == [0, 1, 2, 3]
    for job in ("pyddp-alike", "ownddp-alike", "helperddp-alike-watched"):
        assert found[job, 0]["first"] == [0, 1, 2, 3]
    for job in ("ddp-apart", "ddp-alike", "pyddp-alike", "ownddp-alike", "helperddp-alike-watched"):
        failed = found[job, 0]
        assert failed["step"] > 1 and "Expected to have finished reduction" in failed["error"]
    # A collective one rank never makes times out; the rank that times out first leaves,
    # and the other may then see its connection closed instead.
    parted = [found["fsdp-apart", rank] for rank in (0, 1) if ("fsdp-apart", rank) in found]
    assert parted and all(line["step"] > 1 for line in parted), parted
    assert any("Timed out" in line["error"] for line in parted), parted
    closed = ("Timed out", "Connection closed by peer")
    assert all(any(c in line["error"] for c in closed) for line in parted), parted
    assert [found["fsdp-alike", rank]["step"] for rank in (0, 1)] == [None, None]
    # Watched, the job fails as it did, and the watch said so at step 1.
    watched = found["ddp-alike-watched", 0]
    assert (watched["step"], watched["error"]) == (
        found["ddp-alike", 0]["step"],
        found["ddp-alike", 0]["error"],
    )
    assert any("drawn at random (torch.rand at models.py:" in w for w in watched["warned"])
    assert not found["ddp-alike", 0]["warned"]
    # A generator a helper object holds: the watch names where it drew (before: nothing).
    helper = found["helperddp-alike-watched", 0]["warned"]
    assert any("drawn at random (schedule.rng.uniform at models.py:" in w for w in helper)
    # A router: every expert in the first step, and DDP fails once a batch leaves one idle.
    routed = [line for (job, _), line in found.items() if job == "moe-ddp"]
    assert all(line["first"] == list(range(8)) and line["step"] > 1 for line in routed)
    assert any("Expected to have finished reduction" in line["error"] for line in routed)
    # Watched, the job fails as it did, and the watch said so at step 1 on each rank.
    for rank in (0, 1):
        watched, plain = found["moe-ddp-watched", rank], found["moe-ddp", rank]
        ddps = ["Expected to have finished reduction" in line["error"] for line in (watched, plain)]
        assert watched["step"] == plain["step"] and ddps[0] == ddps[1], (watched, plain)
        assert any("a router's choice" in w and "moe.py:" in w for w in watched["warned"])
    assert not any(line["warned"] for line in routed)
    # Under FSDP2 (each expert a unit) the ranks part at the first batch that leaves an
    # expert idle on one of them: its unit's all-gather waits on the other (gloo times out).
    sharded = [found["moe-fsdp", rank] for rank in (0, 1)]
    assert all(line["first"] == list(range(8)) and line["step"] > 1 for line in sharded)
    assert any("Timed out" in line["error"] for line in sharded), sharded
    assert not any(line["warned"] for line in sharded)
    for rank in (0, 1):  # watched, the watch said so at step 1 (before: nothing)
        watched = found["moe-fsdp-watched", rank]
        assert watched["step"] == sharded[rank]["step"], (watched, sharded[rank])
        assert [w for w in watched["warned"] if "under FSDP2" in w and "router" in w], watched
    if switch:  # transformers' own: each block a unit, ranks alike in step 1, apart after
        assert sorted(line["rank"] for line in after) == [0, 1]
        for line in after:  # the watch warned at step 1 (before: nothing)
            assert [w for w in line["warned"] if "modeling_switch_transformers.py" in w], line
        # It fails at step 2 (a rank gloo aborts outright writes no line of it).
        assert all(line["step"] == 2 for line in ended), ended


def test_a_batch_that_reaches_every_expert_is_not_proven_on_cpu_or_meta() -> None:
    """The MoE job above (built from seed 0, as execorder builds it): its first batch reaches
    every expert, and DDP fails later."""
    from moe import MoE

    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(6))  # rank 0's first
    said_as = {"cpu": AssumptionKind.COMPUTED, "meta": AssumptionKind.SELECTION}
    for device, kind in said_as.items():  # CPU routes for real, meta assumes
        report = execorder.profile(MoE, inputs=(x,), device=device, backward=True).report
        assert report.summary.params_used == report.summary.params_total
        assert [a.assumed for a in report.assumptions] == [kind]
        said = verdict(report)
        assert said.startswith("not proven:") and "router" in said, (device, said)
    torch.manual_seed(0)
    model = MoE()  # and the step itself, recorded in the job (before: "ok")
    with execorder.record(model) as recording:
        model(x).sum().backward()
    report = recording.report()
    assert report.summary.params_used == report.summary.params_total
    assert [a.assumed for a in report.assumptions] == [AssumptionKind.COMPUTED]
    assert verdict(report).startswith("not proven:")


def test_a_step_of_fsdp2_follows_the_router_through_its_unsharded_parameters(
    tmp_path: object,
) -> None:
    """FSDP2 puts unsharded parameters in each unit's place as it runs: the router's choice
    is computed from those (before: not followed, and the step read as any other)."""
    from moe import MoE
    from torch.distributed.fsdp import fully_shard

    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    plain = MoE()
    with execorder.record(plain) as recording:
        plain(x).sum().backward()
    expected = recording.report()
    store = dist.FileStore(f"{tmp_path}/store", 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = MoE()
        for expert in model.experts:
            fully_shard(expert)
        fully_shard(model)
        with execorder.record(model) as recording:
            model(x).sum().backward()
        report = recording.report()
    finally:
        dist.destroy_process_group()
    assert [a.assumed for a in report.assumptions] == [AssumptionKind.COMPUTED]
    assert report.assumptions == expected.assumptions
    assert verdict(report).startswith("not proven:")


def test_a_recorded_step_says_what_it_drew() -> None:
    """record() inside a training step of one's own: the same choices, the same verdict."""
    torch.manual_seed(0)
    model = models.LayerDrop()
    x = torch.randn(2, 4)
    torch.manual_seed(53)  # a draw that runs every layer
    with execorder.record(model) as recording:
        model(x).sum().backward()
    report = recording.report()
    assert [(a.op, a.count) for a in report.assumed(AssumptionKind.DRAWN)] == [("torch.rand", 4)]
    assert report.summary.params_unused == 0
    assert verdict(report).startswith("not proven:")


class _Raises:
    """A global no profiler should trip on: reading its class raises."""

    @property
    def __class__(self):  # type: ignore[override]
        raise RuntimeError("not today")


ODD_GLOBAL = _Raises()


def test_an_odd_global_of_the_models_file_is_passed_over() -> None:
    report = execorder.profile(HoldsAnUnusedGenerator, input_size=(2, 4)).report
    assert not report.assumptions


class NumpySchedule:
    def __init__(self, np: object) -> None:
        self.rng = np.random.default_rng(5)  # type: ignore[attr-defined]


def numpy_keeper(np: object):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)  # type: ignore[attr-defined]
    return lambda: rng


class NumpyHeldDrop(nn.Module):
    """LayerDrop from a NumPy generator held by a helper object, a closure, a dict, a list or
    the class, or made in forward: NumPy's generators cannot be wrapped, so each is seen
    as its state moving, where the scan finds it (or made by ``np.random.default_rng``)."""

    CLASS_RNG: object = None

    def __init__(self, held: str) -> None:
        super().__init__()
        import numpy as np

        self.np, self.held = np, held
        self.schedule, self.keeps = NumpySchedule(np), numpy_keeper(np)
        self.rngs, self.streams = {"drop": np.random.default_rng(5)}, [np.random.default_rng(6)]
        self.layers = nn.ModuleList(models.Unit(4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rng = {
            "helper": lambda: self.schedule.rng,
            "closure": self.keeps,
            "dict": lambda: self.rngs["drop"],
            "list": lambda: self.streams[0],
            "class": lambda: type(self).CLASS_RNG,
            "made": lambda: self.np.random.default_rng(),
        }[self.held]()
        for layer in self.layers:
            x = layer(x) if rng.random() >= 0.0 else x  # type: ignore[attr-defined]
        return x


@pytest.mark.parametrize(
    ("held", "name"),
    [
        ("helper", "schedule.rng"),
        ("closure", "keeps.rng"),
        ("dict", "rngs['drop']"),
        ("list", "streams[0]"),
        ("class", "NumpyHeldDrop.CLASS_RNG"),
        ("made", "numpy.random.default_rng()"),
    ],
)
def test_a_numpy_generator_held_by_the_model_or_made_in_forward_is_seen(
    held: str, name: str
) -> None:
    """Each said 'DDP check ok' before."""
    np = pytest.importorskip("numpy")
    NumpyHeldDrop.CLASS_RNG = np.random.default_rng(5)
    report = execorder.profile(NumpyHeldDrop, input_size=(2, 4), init_kwargs={"held": held}).report
    drawn = report.assumed(AssumptionKind.DRAWN)
    assert [(a.op, a.own_generator) for a in drawn] == [(f"{name}'s generator", True)]
    assert verdict(report).startswith("not proven:")
    assert np.random.default_rng is np.random._generator.default_rng  # given back


def test_a_run_leaves_the_models_own_generators_as_it_found_them() -> None:
    """Profiling a model of the caller's does not move its generators (its training then
    draws as it would have), as the run's seed leaves torch's and the global ones; and a
    second run draws as the first did."""
    np = pytest.importorskip("numpy")
    held = models.OwnRandomLayerDrop(), TorchGeneratorDrop(own=True)
    numpy_held = NumpyHeldDrop("helper")
    states = (
        held[0].rng.getstate(),
        held[1].generator.get_state(),
        numpy_held.schedule.rng.bit_generator.state,
    )
    for model in (*held, numpy_held):
        first = execorder.profile(model, input_size=(2, 4)).report
        again = execorder.profile(model, input_size=(2, 4)).report
        assert first.assumed(AssumptionKind.DRAWN) and first.to_dict() == again.to_dict()
    assert held[0].rng.getstate() == states[0]
    assert torch.equal(held[1].generator.get_state(), states[1])
    assert numpy_held.schedule.rng.bit_generator.state == states[2]
    assert np.random.default_rng is np.random._generator.default_rng
