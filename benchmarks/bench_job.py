"""What recording a training step costs inside a job, wrapper by wrapper.

A Llama (transformers, hidden 256, 4 layers, batch 4 x 64 tokens) trains on
2 gloo ranks on this machine's CPU, under each wrapper a job uses: none, DDP,
FSDP2 (each block, then the root), FSDP2 over checkpointed blocks (as
torchtitan applies them), tensor parallelism (attention and MLP of each
block), and ``torch.compile`` (aot_eager, or ``--backend inductor``). For
each, a plain step (forward, backward of the summed logits) and the same
step inside ``execorder.record(model)`` alternate (each first in turn),
after warm-up steps; medians of ``--repeats`` each, and the time
``report()`` takes afterwards. Under
``torch.compile`` the recorded step runs eagerly (``force_eager``): its cost
is given against the compiled step and against the same step uncompiled.

    python benchmarks/bench_job.py            # part of make bench
    python benchmarks/bench_job.py --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

WRAPPERS = ("none", "ddp", "fsdp2", "fsdp2+checkpoint", "tp", "compile")


def build() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


def wrapped(name: str, model: Any, backend: str = "aot_eager") -> Any:
    """What the training loop calls, and what record() is given."""
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )
    from torch.nn.parallel import DistributedDataParallel

    layers = model.model.layers
    if name == "ddp":
        return DistributedDataParallel(model)
    if name in ("fsdp2", "fsdp2+checkpoint"):
        for i, block in enumerate(list(layers)):
            if name == "fsdp2+checkpoint":
                block = checkpoint_wrapper(block)
                layers.register_module(str(i), block)
            fully_shard(block)
        fully_shard(model)
        return model
    if name == "tp":
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        plan = {
            **{f"self_attn.{p}_proj": ColwiseParallel() for p in "qkv"},
            "self_attn.o_proj": RowwiseParallel(),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(),
        }
        for block in layers:
            parallelize_module(block, mesh, plan)
        return model
    if name == "compile":
        return torch.compile(model, backend=backend)
    return model


def worker(repeats: int, backend: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    import execorder
    from execorder.ranks import unreduced

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ids = torch.randint(0, 1000, (4, 64), generator=torch.Generator().manual_seed(rank))
    results: dict[str, dict[str, float]] = {}
    for name in WRAPPERS:
        call = wrapped(name, build(), backend)

        def step(call: Any = call) -> None:
            call(input_ids=ids).logits.float().sum().backward()

        def recorded(call: Any = call) -> Any:
            with execorder.record(call) as recording:
                step(call)
            return recording

        def timed(run: Callable[[], Any]) -> float:
            dist.barrier()
            start = time.perf_counter()
            run()
            return time.perf_counter() - start

        for _ in range(3):  # warm-up (compiles once under torch.compile)
            step()
        recorded()
        plain, inside, report, uncompiled, gradients = [], [], [], [], []
        for round_ in range(repeats):
            holder: list[Any] = []
            pair = [
                (plain, step),
                (inside, lambda holder=holder: holder.append(recorded())),
            ]
            for times, run in pair if round_ % 2 else pair[::-1]:  # either first in turn
                times.append(timed(run))
            start = time.perf_counter()
            holder[0].report()
            report.append(time.perf_counter() - start)
            if name == "compile":
                with torch.compiler.set_stance("force_eager"):
                    uncompiled.append(timed(step))
            if name == "ddp":  # what StepWatch adds after it: the ranks' copies compared
                gradients.append(timed(lambda holder=holder: unreduced(holder[0])))
        results[name] = {
            "step_ms": statistics.median(plain) * 1e3,
            "recorded_ms": statistics.median(inside) * 1e3,
            "report_ms": statistics.median(report) * 1e3,
        }
        if uncompiled:
            results[name]["uncompiled_ms"] = statistics.median(uncompiled) * 1e3
        if gradients:
            results[name]["gradients_ms"] = statistics.median(gradients) * 1e3
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--backend", default="aot_eager", help="torch.compile's backend (inductor: slow to build)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.repeats, args.backend, args.worker)
        return
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "out.json")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            __file__,
            "--repeats",
            str(args.repeats),
            "--backend",
            args.backend,
            "--worker",
            out,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            sys.exit(f"bench_job: the ranks failed:\n{done.stderr[-3000:]}")
        results = json.loads(Path(out).read_text())
    print(
        "a training step inside record(), Llama 4 x 256 on 2 gloo ranks (CPU), "
        f"median of {args.repeats}, alternating; torch.compile backend {args.backend}"
    )
    print(f"{'wrapper':18} {'step':>10} {'recorded':>10} {'ratio':>7} {'report()':>10}")
    for name, figures in results.items():
        ratio = figures["recorded_ms"] / figures["step_ms"]
        print(
            f"{name:18} {figures['step_ms']:8.1f} ms {figures['recorded_ms']:8.1f} ms "
            f"{ratio:6.2f}x {figures['report_ms']:8.1f} ms"
        )
        if "uncompiled_ms" in figures:
            eager = figures["uncompiled_ms"]
            print(
                f"{'  (uncompiled)':18} {eager:8.1f} ms {'':>11} "
                f"{figures['recorded_ms'] / eager:6.2f}x of the uncompiled step"
            )
        if "gradients_ms" in figures:
            compared = figures["gradients_ms"]
            print(
                f"{'  (gradients)':18} {compared:8.1f} ms {'':>11} "
                f"{compared / figures['step_ms']:6.2f}x of the step: StepWatch comparing the "
                "ranks' parameters and gradients"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
