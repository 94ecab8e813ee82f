"""Record one training step of a model sharded with FSDP2, on every rank.

    torchrun --standalone --nproc-per-node 2 sample_models/record_fsdp2.py

Each block is an FSDP2 unit, then the root. FSDP2 swaps each unit's sharded
parameters for unsharded ones around its forward; the recorded step reports
them under the model's own names, exactly as the unsharded model's step
does, and the ranks are compared.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard
from transformer import Transformer

import execorder
import execorder.ranks


def step(model: torch.nn.Module, ids: torch.Tensor) -> execorder.Report:
    with execorder.record(model) as recording:  # the step as the job runs it
        logits = model(ids)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    return recording.report(target="Transformer")


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = Transformer(n_layers=2)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(dist.get_rank()))
    report = step(model, ids)

    torch.manual_seed(0)
    unsharded = step(Transformer(n_layers=2), ids)
    result = execorder.ranks.compare(report)
    if dist.get_rank() == 0:
        s = report.summary
        print(f"FSDP2 step: {s.calls} module calls, {s.params_used} of {s.params_total}", end=" ")
        print("parameters used")
        print(f"first uses: {', '.join(p.name for p in report.params[:3])}, ...")
        print(f"the unsharded model's report: {'the same' if report == unsharded else 'different'}")
        print(f"ranks agree: {result.agree}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
