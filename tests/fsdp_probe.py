"""Shard models by execorder's FSDP plans under real FSDP2, and log what FSDP2 gathers.

Run by tests/test_fsdp_real.py in a subprocess with a timeout (a process group
that hangs can never hang the test run): two ranks on CPU with the gloo
backend and a file store (no network port), started by
``torch.multiprocessing``. For each case it builds the model (seeded, the
same on both ranks), shards it, runs two training steps, and prints, from
rank 0, one JSON line with what FSDP2 did in the second step: each unit's
forward or backward starting (``run``), each prefetch a list asked for
(``prefetch``), and each all-gather it issued (``gather``, with whether a
prefetch issued it: a unit still gathered needs none). FSDP2's own parameter
groups are wrapped to see this; nothing of FSDP2 is changed.

    python tests/fsdp_probe.py STORE_FILE PLANS_JSON [WORLD_SIZE]

It also prints, for each unit, the bytes each rank holds (``shard_bytes``:
its padded sharded parameters), the bytes of each all-gather it issued
(``gather_bytes``: FSDP2's all-gather output) and whether FSDP2 reshards it
after forward (``reshard_after_forward``, read after the root's lazy init).

PLANS_JSON maps a case to ``{"plan": <execorder fsdp JSON>, "lists": "plan" or
"registration"}``: the plan's lists, or lists built from registration order
(unit i prefetches unit i+1 in forward and unit i-1 in backward, as is
common), on the plan's units.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "sample_models")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from probing import leave  # noqa: E402
from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: E402
from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState  # noqa: E402
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup  # noqa: E402

WORLD = int(sys.argv[3]) if len(sys.argv) > 3 else 2


def build(case: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The model of a case; ``NAME@variant`` builds NAME (the variant is the plan's)."""
    torch.manual_seed(0)
    case = case.split("@")[0]
    if case == "encdec":
        from encdec import EncoderDecoder

        return EncoderDecoder(), (torch.randint(0, 100, (2, 16)),)
    if case == "llama":
        from hf import tiny_llama

        return tiny_llama(layers=3), (torch.randint(0, 100, (1, 16)),)
    if case.startswith("llama_titan"):  # llama_titan (untied), llama_titan_tied
        from hf import tiny_llama

        return tiny_llama(layers=3, tie=case.endswith("tied")), (torch.randint(0, 100, (1, 16)),)
    if case == "bert_lm":
        from hf import tiny_bert_lm

        return tiny_bert_lm(), (torch.randint(0, 100, (1, 16)),)
    import models

    return getattr(models, case)(), (torch.randn(2, 4),)


class Log:
    """What FSDP2 does, seen from its parameter groups."""

    def __init__(self) -> None:
        self.events: list[list[object]] = []
        self.names: dict[int, str] = {}
        self.phase = "forward"
        self.prefetching = False
        self.gather_bytes: dict[str, int] = {}  # unit -> bytes of its all-gather output

    def install(self) -> None:
        log = self
        unshard, pre_forward, pre_backward = (
            FSDPParamGroup.unshard,
            FSDPParamGroup.pre_forward,
            FSDPParamGroup.pre_backward,
        )
        prefetch = FSDPParamGroup._prefetch_unshard

        def logged_unshard(self, async_op=False):  # type: ignore[no-untyped-def]
            issues = (
                self._all_gather_result is None
                and not self.is_unsharded
                and (self.unshard_in_backward or self._training_state != TrainingState.PRE_BACKWARD)
            )
            if issues:
                log.add("gather", log.names[id(self)], log.prefetching)
            done = unshard(self, async_op)
            result = self._all_gather_result
            if issues and result is not None:
                output = result.all_gather_output
                log.gather_bytes[log.names[id(self)]] = output.numel() * output.element_size()
            return done

        def logged_pre_forward(self, module, args, kwargs):  # type: ignore[no-untyped-def]
            log.add("run", log.names[id(self)])
            return pre_forward(self, module, args, kwargs)

        def logged_pre_backward(self, *args):  # type: ignore[no-untyped-def]
            if self._training_state != TrainingState.PRE_BACKWARD:
                log.add("run", log.names[id(self)])
            return pre_backward(self, *args)

        def logged_prefetch(target, pass_type):  # type: ignore[no-untyped-def]
            log.add("prefetch", log.names[id(target)])
            log.prefetching = True
            try:
                return prefetch(target, pass_type)
            finally:
                log.prefetching = False

        FSDPParamGroup.unshard = logged_unshard  # type: ignore[method-assign]
        FSDPParamGroup.pre_forward = logged_pre_forward  # type: ignore[method-assign]
        FSDPParamGroup.pre_backward = logged_pre_backward  # type: ignore[method-assign]
        FSDPParamGroup._prefetch_unshard = staticmethod(logged_prefetch)  # type: ignore[method-assign]

    def add(self, kind: str, name: str, prefetched: bool = False) -> None:
        self.events.append([self.phase, kind, name, prefetched])


def run_case(case: str, spec: dict, log: Log) -> dict:
    import execorder.fsdp

    model, inputs = build(case)
    plan = spec["plan"]
    if spec["lists"] == "plan":
        execorder.fsdp.shard(model, plan)
    else:
        units = [u["name"] for u in plan["units"] if u["name"]]
        # Registration order: the order named_modules() meets them.
        position = {name: i for i, (name, _) in enumerate(model.named_modules())}
        units.sort(key=position.__getitem__)
        for name in sorted(units, key=lambda n: -n.count(".")):
            fully_shard(model.get_submodule(name))
        fully_shard(model)
        for i, name in enumerate(units):
            module = model.get_submodule(name)
            module.set_modules_to_forward_prefetch(
                [model.get_submodule(n) for n in units[i + 1 : i + 2]]
            )
            module.set_modules_to_backward_prefetch(
                [model.get_submodule(n) for n in units[i - 1 : i] if i]
            )
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            for group in module._get_fsdp_state()._fsdp_param_groups:
                log.names[id(group)] = name
    result: dict = {"case": case, "lists": spec["lists"]}
    try:
        # What the first forward does: the root is settled (and its flag) here.
        model._get_fsdp_state()._lazy_init()
    except Exception as exc:  # what FSDP2 raises is the finding
        result["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return result
    shards: dict[str, int] = {}
    flags: dict[str, bool] = {}
    for unit in plan["units"]:  # a group's modules share one state: name it as the plan does
        module = model.get_submodule(unit.get("modules", [unit["name"]])[0])
        for group in module._get_fsdp_state()._fsdp_param_groups:
            log.names[id(group)] = unit["name"]
            shards[unit["name"]] = sum(
                p._sharded_param_data.numel() * p._sharded_param_data.element_size()
                for p in group.fsdp_params
            )
            flags[unit["name"]] = group.post_forward_mesh_info is not None
    result["shard_bytes"], result["reshard_after_forward"] = shards, flags
    log.gather_bytes = {}
    for _ in range(2):  # the second step is the steady state logged
        log.events = []
        try:
            log.phase = "forward"
            out = model(*inputs)
            loss = (out.logits if hasattr(out, "logits") else out).float().sum()
            log.phase = "backward"
            loss.backward()
        except Exception as exc:  # what FSDP2 raises is the finding
            result["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return result
        model.zero_grad()
    result["events"] = log.events
    result["gather_bytes"] = log.gather_bytes
    return result


def worker(rank: int, store_path: str, plans_path: str) -> None:
    dist.init_process_group(
        "gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD
    )
    try:
        log = Log()
        log.install()
        specs = json.loads(Path(plans_path).read_text())
        for key, spec in specs.items():
            result = run_case(spec["case"], spec, log)
            result["key"] = key
            dist.barrier()
            if rank == 0:
                print(json.dumps(result), flush=True)
    finally:
        dist.destroy_process_group()
    leave()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=WORLD, join=True)
