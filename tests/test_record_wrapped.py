"""``record()`` of a model inside the wrappers a job adds, in one process.

The report is the plain model's, and the wrappers are left as found;
tests/test_inside_job.py has the cases that need ranks."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import models
import pytest
import torch
from compiled_steps import COMPILED, as_eager
from conftest import Later
from seed import Model
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.nn.utils.parametrize import register_parametrization

from execorder import eager
from execorder.errors import NoGradientError, RecordingError
from execorder.output.views import ddp_verdict
from execorder.recording import class_name, module_tree, unwrap
from execorder.training import StepWatch

hf = Later("hf")  # transformers' tiny Llama, imported where a test builds it


def seed_step(model: nn.Module, call: Any = None) -> dict[str, Any]:
    call = call or model
    with eager.record(model) as recording:
        call(torch.ones(2, 6), run_all_layers=True).sum().backward()
    return recording.report(target="seed").to_dict()


def llama_step(model: nn.Module, call: Any = None) -> dict[str, Any]:
    call = call or model
    ids = torch.arange(12).reshape(2, 6)
    with eager.record(model) as recording:
        call(input_ids=ids).logits.sum().backward()
    return recording.report(target="llama").to_dict()


def built(make: Any) -> nn.Module:
    torch.manual_seed(0)
    return make()


def _restored(model: nn.Module) -> bool:
    return (
        all(type(p) in (nn.Parameter,) for p in model.parameters())
        and all(type(m._parameters) is dict for m in model.modules())
        and not any("_call_impl" in vars(m) for m in model.modules())
        and not any(p._post_accumulate_grad_hooks for p in model.parameters())
    )


# -- torch.compile --------------------------------------------------------------


def _compiled(how: str, model: nn.Module, backend: Any) -> Any:
    if how == "torch.compile":
        return torch.compile(model, backend=backend)
    if how == "model.compile":
        model.compile(backend=backend)
        return model
    for block in model.model.layers:  # as torchtitan compiles: each block
        block.compile(backend=backend)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("how", ["torch.compile", "model.compile", "per block"])
def test_a_compiled_model_is_recorded_as_eager_and_compiles_nothing(how: str) -> None:
    torch._dynamo.reset()
    plain = llama_step(built(lambda: hf.tiny_llama(layers=2)))
    counter = CompileCounterWithBackend("aot_eager")
    model = built(lambda: hf.tiny_llama(layers=2))
    compiled = _compiled(how, model, counter)
    ids = torch.arange(12).reshape(2, 6)
    for _ in range(2):
        compiled(input_ids=ids).logits.sum().backward()
    warm = counter.frame_count
    assert warm > 0
    # The compiled model itself is given: names without _orig_mod.
    assert llama_step(compiled) == plain
    assert counter.frame_count == warm  # nothing compiled for the recorded step
    for _ in range(2):
        compiled(input_ids=ids).logits.sum().backward()
    assert counter.frame_count == warm  # nor recompiled after it
    assert torch.compiler.is_compiling() is False
    assert _restored(model)


def test_the_compiled_wrapper_is_not_a_module_of_the_report() -> None:
    model = built(Model)
    compiled = torch.compile(model, backend="eager")
    assert unwrap(compiled) is model
    tree = module_tree(compiled)
    assert tree.modules[0] is model
    assert not any(
        name.startswith("_orig_mod") for names in tree.module_names.values() for name in names
    )
    step, plain = seed_step(compiled), seed_step(built(Model))
    # Compiled code ran eagerly: what is dead in eager's graph rests on that (the compiled
    # graph may hold it as an input, which DDP counts ready); all else is the plain model's.
    dead = [p["name"] for p in plain["params"] if p["dead"]]
    assert dead and [p["name"] for p in step["params"] if p["rests_on_assumption"]] == dead
    held = [a for a in step["assumptions"] if a["assumed"] == COMPILED]
    assert sum(a["count"] for a in held) == len(dead)
    assert as_eager(step) == plain


# -- activation checkpointing ----------------------------------------------------


@pytest.mark.parametrize("impl", [CheckpointImpl.NO_REENTRANT, CheckpointImpl.REENTRANT])
def test_checkpoint_wrapped_blocks_are_the_blocks_and_recompute_is_not_a_call(
    impl: CheckpointImpl,
) -> None:
    plain = llama_step(built(lambda: hf.tiny_llama(layers=2)))
    model = built(lambda: hf.tiny_llama(layers=2))
    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=impl),
        check_fn=lambda m: type(m).__name__ == "LlamaDecoderLayer",
    )
    assert "model.layers.0._checkpoint_wrapped_module" in dict(model.named_modules())
    step = llama_step(model)
    # Only that the reentrant flavour's backward makes each layer's calls again, and gives
    # the layers' parameters their only gradient.
    recomputed = step.pop("recomputed_calls", [])
    recompute_only = step.pop("recompute_only", [])
    assert step == plain
    names = [call["name"] for call in plain["modules"]]
    inside = [n for n in names if n.startswith("model.layers.")]
    reentrant = impl is CheckpointImpl.REENTRANT
    assert [names[i] for i in recomputed] == (inside if reentrant else [])
    layers = [p["name"] for p in plain["params"] if p["name"].startswith("model.layers.")]
    assert sorted(recompute_only) == (sorted(layers) if reentrant else [])


class TwoLayers(nn.Module):
    def __init__(self, wrap: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = checkpoint_wrapper(nn.Linear(4, 4)) if wrap else nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_fx_walks_through_a_checkpoint_wrapper_too() -> None:
    import execorder

    wrapped = execorder.trace(built(lambda: TwoLayers(wrap=True)))
    assert [c.name for c in wrapped.modules] == ["", "a", "b"]
    assert wrapped.to_dict() == execorder.trace(built(TwoLayers)).to_dict()


def test_data_parallel_on_cpu_is_walked_through() -> None:
    model = built(Model)
    parallel = nn.DataParallel(model)  # no GPU: it runs the module itself
    assert seed_step(parallel) == seed_step(built(Model))


# -- parameters swapped while forward runs ----------------------------------------


class SwapsIn(nn.Module):
    """Puts a copy of ``lin.weight`` in its slot around ``lin``'s forward, as FSDP2 swaps."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(2, 2)
        # Held outside the module tree, as FSDP2 holds its unsharded parameters.
        self.__dict__["stand_in"] = nn.Parameter(self.lin.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = self.lin.weight
        self.lin.weight = self.stand_in  # setattr: nn.Module.__setattr__ -> _parameters
        try:
            h = self.lin(x)
        finally:
            self.lin._parameters["weight"] = own  # FSDP2's own way back
        return self.head(h)


def test_a_parameter_swapped_in_counts_for_the_one_it_stands_for() -> None:
    model = built(SwapsIn)
    with eager.record(model) as recording:
        model(torch.ones(3, 4)).sum().backward()
    report = recording.report()
    used = {p.name: p for p in report.params}
    assert "lin.weight" in used and not used["lin.weight"].dead
    assert [p.name for p in report.unused] == ["unused.weight", "unused.bias"]
    assert report.backward is not None and "lin.weight" in report.backward
    # The stand-in itself got the gradient, as FSDP2's unsharded parameter does.
    assert model.stand_in.grad is not None and model.lin.weight.grad is None
    assert _restored(model)


def test_the_modules_own_parameter_dicts_come_back() -> None:
    model = built(SwapsIn)
    dicts = {id(m): m._parameters for m in model.modules()}
    with eager.record(model):
        model(torch.ones(3, 4))
    assert {id(m): m._parameters for m in model.modules()} == dicts
    assert all(m._parameters is dicts[id(m)] for m in model.modules())
    assert _restored(model)


def test_a_parametrized_module_is_recorded_as_before() -> None:
    model = built(lambda: nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    register_parametrization(model[0], "weight", _Symmetric())
    with eager.record(model) as recording:
        model(torch.ones(2, 4)).sum().backward()
    report = recording.report()
    graded = {n for n, p in model.named_parameters() if p.grad is not None}
    assert {p.name for p in report.all_params() if p.gets_gradient} == graded
    assert "0.parametrizations.weight.original" in graded and len(graded) == 4
    assert _restored(model)


class _Symmetric(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.triu() + w.triu(1).transpose(-1, -2)


def test_a_forward_on_copies_says_it_saw_no_use() -> None:
    model = built(Model)
    copies = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    with eager.record(model) as recording:
        torch.func.functional_call(model, copies, (torch.ones(2, 6), True)).sum().backward()
    report = recording.report()
    assert report.no_use_seen
    assert ddp_verdict(report).cells[1].text.startswith("not proven: no parameter was seen used")


class Idle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_an_fx_trace_that_reads_no_parameter_is_a_finding_not_a_blind_spot() -> None:
    """FX's graph holds every read: no read means unused, and DDP fails on it."""
    import execorder

    report = execorder.trace(Idle())
    assert not report.no_use_seen and report.summary.params_used == 0
    assert ddp_verdict(report).cells[1].text == "fails: 1 trainable parameter gets no gradient"
    with eager.record(model := Idle()) as recording:
        model(torch.ones(2))
    assert recording.report().no_use_seen


def test_a_model_that_reads_its_parameters_has_them_seen() -> None:
    model = built(Model)
    with eager.record(model) as recording:
        model(torch.ones(2, 6), True)
    assert not recording.report().no_use_seen


# -- the recorded call ----------------------------------------------------------


class Stepper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.aux = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: torch.Tensor, batch_idx: int = 0) -> torch.Tensor:
        return self(batch).sum()


def test_a_method_can_be_the_recorded_call() -> None:
    model = built(Stepper)
    with eager.record(model, method="training_step") as recording:
        model.training_step(torch.ones(2, 4)).backward()
    report = recording.report()
    assert [c.name for c in report.modules] == ["", "body"]
    assert [p.name for p in report.unused] == ["aux.weight", "aux.bias"]
    assert dict(report.defaults) == {"batch_idx": 0}
    assert "training_step" not in vars(model)


def test_a_method_not_called_says_which_call_was_awaited() -> None:
    model = built(Stepper)
    with eager.record(model, method="training_step") as recording:
        model(torch.ones(2, 4))
    with pytest.raises(RecordingError, match=r"call model\.training_step\(\.\.\.\)"):
        recording.report()


def test_class_names_are_the_models_own() -> None:
    assert class_name(nn.Linear(2, 2)) == "Linear"
    assert class_name(models.Frozen()) == "Frozen"


# -- the training-loop callbacks in one process ------------------------------------


def test_a_step_watch_takes_only_steps_from_1() -> None:
    with pytest.raises(ValueError, match="counted from 1"):
        StepWatch(steps=(0,))
    with pytest.raises(ValueError, match="positive"):
        StepWatch(compare_every=0)
    watch = StepWatch(steps=(2,), compare_every=3)
    assert [s for s in range(1, 7) if watch.wants(s)] == [2, 3, 6]


def test_without_ddp_a_watch_records_and_stops_only_when_asked() -> None:
    model = built(Stepper)
    watch = StepWatch()
    watch.begin(model, 1)
    model(torch.ones(2, 4)).sum().backward()
    report = watch.end()
    assert report is not None and [p.name for p in report.no_grad()] == ["aux.weight", "aux.bias"]
    assert watch.reports == {1: report} and not watch.wants(1)
    strict = StepWatch(stop_on_no_grad=True)
    strict.begin(model, 1)
    model(torch.ones(2, 4)).sum().backward()
    with pytest.raises(NoGradientError) as caught:
        strict.end()
    assert caught.value.params == ("aux.weight", "aux.bias") and not caught.value.under_ddp
    assert _restored(model)


def test_a_watch_does_not_stop_a_compiled_step_on_what_only_eager_leaves_dead() -> None:
    # The teacher, trainable, runs under no_grad: dead in eager's graph, an input of the
    # compiled one, which DDP counts ready (tests/test_inside_job.py runs that job).
    model = built(models.Distill)
    compiled = torch.compile(model, backend="aot_eager")
    strict = StepWatch(stop_on_no_grad=True)
    strict.begin(compiled, 1)
    compiled(torch.ones(2, 16)).sum().backward()
    report = strict.end()
    assert report is not None
    assert [p.name for p in report.dead if p.rests_on_assumption] == [
        "teacher.weight",
        "teacher.bias",
    ]
    assert ddp_verdict(report).cells[1].text.startswith("not proven: 2 trainable parameters")
    plain = StepWatch(stop_on_no_grad=True)
    plain.begin(model, 1)
    model(torch.ones(2, 16)).sum().backward()
    with pytest.raises(NoGradientError):  # uncompiled, DDP fails on them
        plain.end()


def test_outputs_readied_for_ddp_are_the_outputs_for_the_caller() -> None:
    from execorder.backends.eager_wrapped import readied

    weight, held = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    out = {"logits": weight * 2, "count": 3}
    ready, done = readied(out, [held])
    assert done and ready["count"] == 3 and torch.equal(ready["logits"], out["logits"])
    ready["logits"].mul_(3)  # a loop's in-place op on what forward returned
    ready["logits"].sum().backward()
    assert torch.equal(weight.grad, torch.full((3,), 6.0)) and held.grad is None
    nodes, stack = set(), [ready["logits"].grad_fn]
    while stack:
        node = stack.pop()
        nodes.add(node)
        stack += [n for n, _ in node.next_functions if n is not None and n not in nodes]
    assert any(getattr(n, "variable", None) is held for n in nodes)  # DDP's hook runs


def test_compiled_code_is_told_apart_when_the_model_inside_it_is_given() -> None:
    model = built(models.Distill)
    compiled = torch.compile(model, backend="aot_eager")
    with eager.record(model) as recording:  # the model inside, called through the compiled one
        compiled(torch.ones(2, 16)).sum().backward()
    held = [a.op for a in recording.report().assumptions]
    assert held == ["torch.compile"]
    inner = built(models.Distill)
    inner.teacher.compile(backend="aot_eager")  # a compiled block inside, traced from outside
    traced = eager.trace(inner, args=(torch.ones(2, 16),), backward=True)
    assert [a.module for a in traced.assumptions if a.op == "torch.compile"] == ["teacher"]
    disabled = torch._dynamo.disable(model)  # the wrapper FSDP2 and DDP run hooks in
    with eager.record(model) as recording:
        disabled(torch.ones(2, 16)).sum().backward()
    assert not recording.report().assumptions


def test_a_watch_stops_on_a_gradient_in_several_passes_where_ddp_loses_part_of_it(
    tmp_path: Path,
) -> None:
    """Under DDP without static_graph the replicas drift apart silently: the watch stops."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from execorder.errors import SplitGradientError

    def step(watch: StepWatch, model: nn.Module, wrapped: nn.Module) -> Any:
        watch.begin(model, 1)
        wrapped(torch.ones(2, 4)).sum().backward()
        return watch.end()

    plain = built(models.CheckpointReusedFirst)
    report = step(StepWatch(), plain, plain)  # no DDP: said, not stopped
    assert report is not None and dict(report.split_gradients) == {
        "block.weight": 2,
        "block.bias": 2,
    }
    with pytest.raises(SplitGradientError) as caught:
        step(StepWatch(stop_on_no_grad=True), plain, plain)
    assert not caught.value.under_ddp
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        for static_graph in (False, True):
            model = built(models.CheckpointReusedFirst)
            ddp = DistributedDataParallel(model, static_graph=static_graph)
            if static_graph:
                assert step(StepWatch(), model, ddp) is not None
                continue
            with pytest.raises(SplitGradientError) as caught:
                step(StepWatch(), model, ddp)
            assert caught.value.under_ddp
            assert str(caught.value) == (
                "step 1: 2 trainable parameters got their gradient in several backward passes "
                "(reentrant checkpoints run their own): block.weight (2 passes), block.bias "
                "(2 passes); DDP all-reduced them before the last part arrived, so the ranks' "
                "gradients differ. Use use_reentrant=False, or DDP(static_graph=True)"
            )
    finally:
        dist.destroy_process_group()


def test_a_watch_that_sees_no_use_stops_unless_told_never_to() -> None:
    model = built(Model)
    copies = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}

    def step() -> None:
        torch.func.functional_call(model, copies, (torch.ones(2, 6), True)).sum().backward()

    watch = StepWatch()
    watch.begin(model, 1)
    step()
    with pytest.raises(RecordingError, match="step 1: no parameter of Model was seen used"):
        watch.end()
    lenient = StepWatch(stop_on_no_grad=False)
    lenient.begin(model, 1)
    step()
    report = lenient.end()
    assert report is not None and report.no_use_seen
    assert _restored(model)


@pytest.mark.slow
@pytest.mark.transformers
def test_the_transformers_callback_in_a_real_trainer(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    from execorder.training.transformers import ExecOrderCallback

    class Net(Stepper):
        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": ((self.body(x).sum(-1) - labels) ** 2).mean()}

    data = [{"x": torch.ones(4) * i, "labels": torch.tensor(float(i))} for i in range(8)]
    callback = ExecOrderCallback(steps=(1, 2), stop_on_no_grad=True)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=built(Net), args=args, train_dataset=data, callbacks=[callback])
    with pytest.raises(NoGradientError, match=r"step 1: 2 trainable parameters .*aux\.weight"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert _restored(trainer.model)


def test_the_lightning_callback_records_training_step_without_ddp() -> None:
    L = pytest.importorskip("lightning", reason="Lightning is an optional extra")
    from execorder.training.lightning import ExecOrderCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Stepper()

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    callback = ExecOrderCallback(steps=(1, 2))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    data = torch.utils.data.TensorDataset(torch.ones(8, 4))
    module = built(Module)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    assert trainer.global_step == 3  # no DDP: nothing fails on aux, so nothing stops
    assert sorted(callback.reports) == [1, 2]
    report = callback.reports[1]
    assert [c.name for c in report.modules] == ["", "net", "net.body"]
    assert [p.name for p in report.no_grad()] == ["net.aux.weight", "net.aux.bias"]
    assert _restored(module)


def _ddp_fares(model: nn.Module, wrap: Any, watched: bool) -> tuple[list[int] | None, Any]:
    """Two steps of ``wrap(model)`` (a DDP, find_unused_parameters=False): the indices DDP
    names at the second when it fails (None when it runs), and, when the first is watched,
    what the watch did (its report, or the error it stopped with)."""
    import re

    watch, outcome = StepWatch(), None
    wrapped = wrap(model)
    for step in (1, 2):
        if watched and step == 1:
            watch.begin(model, step)
        try:
            wrapped(torch.ones(2, 4)).sum().backward()
        except RuntimeError as exc:
            found = re.search(r"did not receive grad for rank 0: ([\d ]+)", str(exc))
            assert found is not None, exc
            return [int(i) for i in found.group(1).split()], outcome
        if watched and step == 1:
            try:
                outcome = watch.end()
            except NoGradientError as exc:
                return None, exc  # stopped before DDP could fail
    return None, outcome


@pytest.mark.slow
def test_parameters_ddp_ignores_are_neither_numbered_nor_waited_for(tmp_path: Path) -> None:
    """As real DDP takes _ddp_params_and_buffers_to_ignore, names matched its way; under
    DDP(torch.compile(model)) its names start with _orig_mod., so the model's list misses;
    replicate(model) (torch's composable DDP) makes its DDP over a list of the parameters,
    which has none, and runs it from the model's hooks: the watch finds it all the same."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    def ddp(model: nn.Module) -> nn.Module:
        return DistributedDataParallel(model, find_unused_parameters=False)

    def compiled_ddp(model: nn.Module) -> nn.Module:
        return ddp(torch.compile(model, backend="aot_eager"))

    def replicated(model: nn.Module) -> nn.Module:  # torch's composable DDP: a parameter list
        from torch.distributed._composable.replicate import replicate

        return replicate(model)

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        for build in (models.DdpIgnores, lambda: models.DdpIgnores(True, True)):
            for wrap in (ddp, compiled_ddp, replicated):
                torch.manual_seed(0)
                real, _ = _ddp_fares(build(), wrap, watched=False)
                torch.manual_seed(0)
                model = build()
                ran, outcome = _ddp_fares(model, wrap, watched=True)
                assert ran is None  # a watched job never reaches DDP's failure
                if real is None:
                    report = outcome
                    assert report is not None and not report.no_grad()
                    assert set(report.ddp_ignored) == {
                        "scale",
                        "aux.weight",
                        "aux.bias",
                        "extra.weight",
                        "extra.bias",
                    }
                    assert [p.ddp_index for p in report.ddp_order()] == [0, 1, 2]
                else:
                    assert isinstance(outcome, NoGradientError), (wrap, outcome)
                    assert list(outcome.ddp_indices) == real  # DDP's own numbers
        torch.manual_seed(0)
        # The report of a trace says what DDP(model) takes, from the model's own list.
        traced = eager.trace(models.DdpIgnores(), args=(torch.ones(2, 4),), backward=True)
        assert [p.ddp_index for p in traced.no_grad()] == [0, 3, 4]
        assert traced.ddp_ignored == ("aux.weight", "aux.bias")
        assert ddp_verdict(traced).cells[1].text.startswith("fails: 3 trainable parameters")
        quiet = eager.trace(models.DdpIgnores(True, True), args=(torch.ones(2, 4),))
        assert ddp_verdict(quiet).cells[1].text == (
            "ok: every trainable parameter DDP waits for gets a gradient"
        )
        read = type(quiet).from_dict(quiet.to_dict())
        assert read.ddp_ignored == quiet.ddp_ignored and read.ddp_order() == quiet.ddp_order()
        from test_schema import VALIDATOR

        VALIDATOR.validate(quiet.to_dict())
    finally:
        dist.destroy_process_group()


def test_a_ddp_built_before_requires_grad_changed_is_what_the_report_says(
    tmp_path: Path,
) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from execorder.report import Report

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        ddp = DistributedDataParallel(model)
        with eager.record(ddp) as recording:
            ddp(torch.ones(2, 4)).sum().backward()
        assert recording.report().ddp_built is None  # as built
        switching = models.SwitchesOff()  # forward itself switches requires_grad off
        switched = DistributedDataParallel(switching, find_unused_parameters=True)
        with eager.record(switched) as recording:
            switched(torch.ones(2, 4)).sum().backward()
        assert recording.report().ddp_built is None  # DDP was built for what forward began with
        model[0].requires_grad_(False)
        with eager.record(ddp) as recording:
            ddp(torch.ones(2, 4)).sum().backward()
        report = recording.report()
        fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        fresh[0].requires_grad_(False)
        rebuilt = DistributedDataParallel(fresh)  # frozen before it was wrapped
        with eager.record(rebuilt) as recording:
            rebuilt(torch.ones(2, 4)).sum().backward()
        trains = recording.report()
    finally:
        dist.destroy_process_group()
    # The same parameters, frozen alike: only what the DDP was built for tells them apart.
    from execorder.analysis import diff_reports
    from execorder.output.terminal import draw, plain_text
    from execorder.output.views import diff_view

    changed = diff_reports(trains, report)
    assert changed.params == () and changed.ddp_built == (None, report.ddp_built)
    assert not changed.equivalent and diff_reports(report, report).equivalent
    said = " ".join(plain_text(draw(diff_view(changed)), width=200).split())
    assert "Changed: the recorded step's DDP" in said
    assert "built for 4 parameters, 2 require grad now" in said
    built = report.ddp_built
    assert built is not None and (built.params, built.params_now) == (4, 2)
    assert (built.bytes, built.bytes_now) == (160, 80)
    assert (built.frozen_since, built.trainable_since) == (2, 0)
    assert not report.no_grad()  # frozen, as far as the model goes
    verdict = ddp_verdict(report).cells[1].text
    assert verdict.startswith(
        "fails: the DDP that ran was built when 4 parameters (160 B) required grad, 2 (80 B) "
        "do now: it still waits for those frozen since"
    )
    assert Report.from_dict(report.to_dict()).ddp_built == built
    from test_schema import VALIDATOR

    VALIDATOR.validate(report.to_dict())
    broken = report.to_dict()
    broken["ddp_built"]["params_now"] = -1
    assert not VALIDATOR.is_valid(broken)


def test_what_ddp_reduced_is_a_synced_steps_with_torchs_own_hooks(
    tmp_path: Path,
) -> None:
    """What the watch compares across ranks: the parameters DDP registers (their copies and
    their gradients), and the group it averaged them over; none under no_sync() (each rank
    sums its own gradients), or with a comm hook that is not one of torch's all-reduces
    (local SGD reduces within subgroups, by design)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    from execorder.ranks import _fingerprint

    def recorded(ddp: Any, synced: bool = True) -> Any:
        with eager.record(ddp) as recording, nullcontext() if synced else ddp.no_sync():
            policy, value = ddp(torch.ones(2, 4))
            (policy.sum() + value.sum()).backward()
        return recording.reduced_by_ddp()

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = built(models.TwoHeads)
        model.value.requires_grad_(False)
        ddp = DistributedDataParallel(model)
        group, params = recorded(ddp)
        assert group is ddp.process_group
        assert [name for name, _ in params] == [
            "body.weight",
            "body.bias",
            "policy.weight",
            "policy.bias",
        ]
        assert all(a is b for (_, a), b in zip(params, model.parameters(), strict=False))
        assert recorded(ddp, synced=False) is None
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
        assert recorded(ddp) is not None
        other = DistributedDataParallel(built(models.TwoHeads))
        other.register_comm_hook(
            None, lambda state, bucket: default_hooks.allreduce_hook(None, bucket)
        )
        assert recorded(other) is None
    finally:
        dist.destroy_process_group()
    # Equal gradients print alike, bit for bit; None, NaN and infinities have prints of their own.
    grad = torch.randn(3, 4)
    assert torch.equal(_fingerprint(grad), _fingerprint(grad.clone()))
    assert not torch.equal(_fingerprint(grad), _fingerprint(grad * (1 + 1e-7)))
    prints = [
        _fingerprint(g)
        for g in (None, torch.full((2,), float("nan")), torch.full((2,), float("inf")))
    ]
    assert len({tuple(p.tolist()) for p in prints}) == 3
    assert all(torch.isfinite(p).all() for p in prints)


def test_a_head_no_loss_reads_under_static_graph_fails_at_step_3_and_the_watch_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DDP(static_graph=True) over a model whose value head the loss never reads: real DDP
    fails at step 3, since its first step, which runs the unread output's graph, fixed the
    head as one it waits for. The watch of step 1 warns of what that first step fixed; the
    watch of step 2 stops, by DDP's own check of its reduction (before, it warned at step 1
    that the head was taken for unused, and let step 2 pass)."""
    import logging

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    def steps(watched: int | None) -> tuple[int | None, str | None]:
        """Three steps; the one DDP raises at, and what the watch of ``watched`` raised."""
        ddp = DistributedDataParallel(built(models.TwoHeads), static_graph=True)
        watch = StepWatch(steps=() if watched is None else (watched,))
        for step in (1, 2, 3):
            try:
                if watch.wants(step):
                    watch.begin(ddp, step)
                policy, _ = ddp(torch.ones(2, 4))
            except RuntimeError as exc:
                assert "Expected to have finished reduction" in str(exc)
                return step, None
            policy.sum().backward()
            try:
                watch.end()
            except NoGradientError as exc:
                return None, str(exc)
        return None, None

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert steps(None) == (3, None)
        with caplog.at_level(logging.WARNING, logger="execorder"):
            assert steps(1) == (3, None)
        assert (
            "step 1: under DDP(static_graph=True), 2 trainable parameters got no gradient in its "
            "first step (value.weight, value.bias), which fixes its graph for every step"
        ) in caplog.text
        failed, stopped = steps(2)
        assert failed is None and stopped is not None
        assert stopped.startswith(
            "step 2: 2 trainable parameters got no gradient: value.weight (DDP index 4), "
            "value.bias (DDP index 5); DDP (static_graph=True) fails on them at the next step"
        ), stopped
    finally:
        dist.destroy_process_group()


def test_a_report_says_which_ddp_had_not_finished_reducing_by_ddps_own_check(
    tmp_path: Path,
) -> None:
    """A step whose loss leaves the value head without a gradient: DDP waiting for every
    parameter had not finished reducing it, and fails at the next forward; DDP searching for
    unused parameters had. The report says so (``ddp_waiting``), in JSON too, its DDP check
    fails on it, and ``compare()`` refuses it, sending nothing."""
    import json
    from importlib.resources import files

    import jsonschema
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import execorder.ranks
    from execorder.errors import DdpWaitingError
    from execorder.report import Report

    schema = json.loads(files("execorder.report").joinpath("schema.json").read_text())
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        steps = {}
        for find_unused in (False, True):
            ddp = DistributedDataParallel(
                built(models.TwoHeads), find_unused_parameters=find_unused
            )
            with eager.record(ddp) as recording:
                policy, _ = ddp(torch.ones(2, 4))
            assert recording.report().ddp_waiting == ()  # no backward in the block
            with eager.record(ddp) as recording:
                policy, _ = ddp(torch.ones(2, 4))
                policy.sum().backward()
            report = steps[find_unused] = recording.report()
            assert report.ddp_waiting == (() if find_unused else ("",))
            data = json.loads(json.dumps(report.to_dict()))
            jsonschema.Draft202012Validator(schema).validate(data)
            assert Report.from_dict(data) == report
            verdict = ddp_verdict(report).cells[1].text
            if find_unused:
                assert execorder.ranks.compare(report).agree
                ddp(torch.ones(2, 4))  # DDP goes on
                continue
            assert verdict == (
                "fails: the DDP around the model did not finish reducing the recorded step's "
                "gradients (its own check), so it fails at the next step; 2 trainable "
                "parameters got none (value.weight, value.bias)"
            )
            with pytest.raises(DdpWaitingError, match="nothing was sent"):
                execorder.ranks.compare(report)
            with pytest.raises(DdpWaitingError, match="nothing was sent"):
                execorder.ranks.unreduced(recording)
            with pytest.raises(RuntimeError, match="Expected to have finished reduction"):
                ddp(torch.ones(2, 4))
    finally:
        dist.destroy_process_group()
    # The same step and gradients: only whether DDP finished reducing tells them apart (a
    # diff of the two said "No change" before).
    from execorder.analysis import diff_reports

    changed = diff_reports(steps[True], steps[False])
    assert changed.params == () and not changed.equivalent
    assert (changed.ddp_waiting_added, changed.ddp_waiting_removed) == (("",), ())
    back = diff_reports(steps[False], steps[True])
    assert (back.ddp_waiting_added, back.ddp_waiting_removed) == ((), ("",))
    data = json.loads(json.dumps(changed.to_dict()))
    jsonschema.Draft202012Validator(schema).validate(data)
    assert data["ddp_waiting_added"] == [""] and data["equivalent"] is False


def test_a_watch_does_not_stop_on_a_micro_batch_that_ddp_does_not_reduce(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Gradient accumulation under DDP(find_unused_parameters=False): the first micro-batch of
    each step, under no_sync(), leaves the value head without a gradient; the second, which
    DDP reduces, gives it one, and the job runs. A watch that ends on the first (no again())
    says so and lets the job run: before, it stopped it, saying DDP fails at the next step."""
    import logging

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(built(models.TwoHeads))
        watch = StepWatch()
        for step in (1, 2, 3):  # DDP would raise at the start of step 2 if it failed
            if watch.wants(step):
                watch.begin(ddp, step)
            with ddp.no_sync():
                policy, _ = ddp(torch.ones(2, 4))
                policy.sum().backward()
            if watch.active:
                assert watch.unsynced
                with caplog.at_level(logging.WARNING, logger="execorder"):
                    report = watch.end()
                assert report is not None
                assert [p.name for p in report.no_grad()] == ["value.weight", "value.bias"]
            policy, value = ddp(torch.ones(2, 4))
            (policy.sum() + value.sum()).backward()
        assert (
            "step 1: the micro-batch recorded ran under DDP's no_sync(), which reduces nothing, "
            "so whether DDP fails is decided by the micro-batch it reduces (here value.weight, "
            "value.bias got no gradient)"
        ) in caplog.text
    finally:
        dist.destroy_process_group()


def test_a_function_of_the_models_that_passes_no_gradient_leaves_the_accumulators_run() -> None:
    """b.grad stays None, but b's accumulators run, which is what DDP waits for: it counts
    them ready and the job runs (tests/test_inside_job.py runs it under real DDP). The
    report says they get their gradient, as DDP sees it, and the DDP check is ok."""
    model = built(models.PassesNoneModel)
    with eager.record(model) as recording:
        model(torch.ones(2, 4)).sum().backward()
    report = recording.report()
    assert model.b.weight.grad is None and model.a.weight.grad is not None
    assert {p.name for p in report.all_params() if p.gets_gradient} == {
        "a.weight",
        "a.bias",
        "b.weight",
        "b.bias",
    }
    assert ddp_verdict(report).cells[1].text.startswith("ok")


def test_an_optimizer_stepped_in_backward_leaves_the_gradients_seen() -> None:
    """Optimizer in backward: a hook of the user's steps each parameter of the first layer
    and clears its .grad as soon as it is accumulated; the recording sees the accumulation
    all the same, whichever hook runs first."""
    stepped: list[str] = []

    def stepping() -> nn.Module:
        model = built(lambda: nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)))
        for name, param in model[0].named_parameters(prefix="0"):  # the others stepped after
            step = torch.optim.SGD([param], lr=0.1)

            def hook(param: torch.Tensor, step: Any = step, name: str = name) -> None:
                step.step()
                step.zero_grad(set_to_none=True)
                stepped.append(name)

            param.register_post_accumulate_grad_hook(hook)
        return model

    stepping()(torch.ones(2, 6)).sum().backward()  # unrecorded
    plain, stepped[:] = list(stepped), []
    model = stepping()
    with eager.record(model) as recording:
        model(torch.ones(2, 6)).sum().backward()
    report = recording.report()
    assert stepped == plain == ["0.bias", "0.weight"] and model[0].weight.grad is None
    assert {p.name for p in report.all_params() if p.gets_gradient} == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }


def test_a_watched_step_that_calls_the_model_again_is_skipped_not_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Gradient accumulation in a loop of one's own that does not call StepWatch.again()
    (or a pipeline schedule's micro-batches): the model is called again while the step is
    recorded. Before, that call raised inside the training loop; now it runs as it is, and
    the step is logged as not checked. record() itself still refuses a second call."""
    import logging

    model = built(models.TwoHeads)
    watch = StepWatch(stop_on_no_grad=True)
    watch.begin(model, 1)
    with caplog.at_level(logging.WARNING, logger="execorder"):
        for _ in range(2):
            policy, _ = model(torch.ones(2, 4))
            policy.sum().backward()
        assert watch.end() is None
    assert "step 1 not checked: the model was called 2 times while it was recorded" in caplog.text
    assert watch.reports == {} and _restored(model)
    with eager.record(model, several=True) as recording:
        model(torch.ones(2, 4))
        model(torch.ones(2, 4))
    assert recording.calls == 2
    with pytest.raises(RecordingError, match="called 2 times inside the record"):
        recording.report()
    with pytest.raises(RecordingError, match="called a second time"), eager.record(model):
        model(torch.ones(2, 4))
        model(torch.ones(2, 4))
