"""torchtitan's models on meta against a real backward on a GPU (flex has no CPU backward).

execorder runs torchtitan's decoders on meta with FlexAttention stood in for
by attention of the same shapes (execorder.backends.stand_ins). On CPU only a
forward can check that (tests/test_titan.py); this script checks the
gradients: it builds each debug model on CUDA, runs a real forward and
backward with the attention masks its trainer makes, and compares the
parameters that got a gradient with those execorder's meta report says get
one (used and not dead), and the module calls. Skips without CUDA or
torchtitan.

    python benchmarks/gpu_titan.py        # also run by benchmarks/gpu_check.sh
"""

from __future__ import annotations

import sys

import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_titan: skipped (no CUDA device)")
        return 0
    try:
        import torchtitan  # noqa: F401
    except ImportError:
        print("gpu_titan: skipped (torchtitan is not installed)")
        return 0
    import execorder

    failed = 0
    for registry in ("llama3", "deepseek_v3", "qwen3"):
        target = f"torchtitan.models.{registry}:model_registry"
        report = execorder.profile(
            target, init_kwargs={"flavor": "debugmodel"}, input_size="tokens=int64[2,256]@0:2000",
            backward=True,
        ).report  # fmt: skip
        module = __import__(f"torchtitan.models.{registry}", fromlist=["model_registry"])
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = module.model_registry("debugmodel").model.build()
        tokens = torch.randint(0, 2000, (2, 256), device="cuda")
        positions = torch.arange(256, device="cuda").expand(2, 256)
        calls: list[str] = []
        names = {id(m): n for n, m in model.named_modules()}
        for m in model.modules():
            m.register_forward_pre_hook(lambda m, _, c=calls, n=names: c.append(n[id(m)]))
        out = model(tokens, positions, model.get_attention_masks(positions=positions))
        out.float().sum().backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None}
        said = {p.name for p in report.params if not p.dead}
        same_calls = [c.name for c in report.modules] == calls
        ok = got == said and same_calls
        failed += not ok
        print(
            f"{registry}: {'same' if ok else 'DIFFERENT'}: {len(got)} parameters got a gradient, "
            f"execorder said {len(said)}; module calls {'equal' if same_calls else 'differ'}"
            + ("" if ok else f"; only real: {sorted(got - said)[:5]}, only said: "
               f"{sorted(said - got)[:5]}")
        )  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
