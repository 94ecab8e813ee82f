"""What FSDP2 itself holds once a model is sharded, read from its own states (for the probes
that compare a framework's sharding with execorder's)."""

from __future__ import annotations

import torch
from torch.distributed.fsdp import FSDPModule


def sharded(model: torch.nn.Module) -> tuple[dict[str, list], dict[str, list]]:
    """Each unit's bytes a rank holds and reshard flag (None for a unit without parameters),
    by its modules joined by +; each parameter's shard shape and placement."""
    names = {id(m): n for n, m in model.named_modules()}
    units: dict[int, list] = {}
    params: dict[str, list] = {}
    for name, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        unit = units.setdefault(id(state), [[], 0, None])
        unit[0].append(name)
        for group in state._fsdp_param_groups:
            unit[1], unit[2] = 0, group.post_forward_mesh_info is not None
            for param in group.fsdp_params:
                data = param._sharded_param_data
                unit[1] += data.numel() * data.element_size()
                key = f"{names[id(param._module_info.module)]}.{param._module_info.param_name}"
                params[key] = [list(data.shape), str(param.sharded_param.placements)]
    return {"+".join(modules): [size, flag] for modules, size, flag in units.values()}, params
