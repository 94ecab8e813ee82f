"""The meta-to-CPU fallback: only where values are needed, and never beyond the memory there is."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from execorder.backends.eager_failures import needs_values

TESTS = Path(__file__).resolve().parent
SAMPLES = TESTS.parent / "sample_models"
CAP = 3 * 1024**3  # bytes of address space for the capped runs: torch takes 0.7


def _raised(run: Callable[[], object]) -> BaseException:
    try:
        run()
    except Exception as exc:
        return exc
    raise AssertionError("it ran")


_x = torch.empty(4, 3, device="meta")
META_ONLY = {
    "item": lambda: _x.sum().item(),
    "branch": lambda: bool(_x.sum() > 0),
    "nonzero": lambda: torch.nonzero(_x),
    "mask": lambda: _x[_x > 0],
    "tolist": lambda: _x.tolist(),
    "no-meta-kernel": lambda: torch.unique_consecutive(_x),
    "cpu-tensor": lambda: _x + torch.ones(4, 3),
}
EVERYWHERE = {
    "float-indices": lambda: torch.nn.Embedding(10, 3, device="meta")(_x),
    "shapes": lambda: _x @ torch.empty(5, 2, device="meta"),
    "python": lambda: {}["key"],
}


@pytest.mark.parametrize("name", META_ONLY)
def test_failures_that_need_values_are_told_apart(name: str) -> None:
    assert needs_values(_raised(META_ONLY[name]))


@pytest.mark.parametrize("name", EVERYWHERE)
def test_mistakes_that_fail_everywhere_are_not(name: str) -> None:
    assert not needs_values(_raised(EVERYWHERE[name]))


def _capped(*args: str) -> subprocess.CompletedProcess[str]:
    """``execorder ARGS`` in a child whose address space is capped (``ulimit -v``)."""
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({CAP}, {CAP}))\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from execorder.cli import main\n"
        f"sys.argv = ['execorder', *{list(args)!r}]\n"
        "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.processes
def test_a_wrong_input_dtype_on_a_70b_model_is_reported_not_rebuilt() -> None:
    done = _capped("trace", f"{SAMPLES}/llama.py:llama2_70b", "--input", "input_ids=float32[1,32]")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line: no note, no rebuild
    assert "on the meta device with input_ids=float32[1, 32]" in done.stderr
    assert "scalar types: Long, Int" in done.stderr


@pytest.mark.processes
def test_a_cpu_rerun_that_cannot_fit_is_refused_with_what_to_do() -> None:
    done = _capped("trace", "models:BigDataDependent", "--input", "x=float32[2,40000]")
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert line.startswith("execorder: error: forward needs real values on the meta device")
    # Which op, and where in the model's code.
    assert "(reading a value computed from parameters (.item(), if tensor:" in line
    assert "at models.py:" in line
    assert "building BigDataDependent() on cpu needs about 6.4 GB" in line
    assert "try a smaller configuration (--init, fewer layers), or --device cuda" in line
    assert "MemoryError" not in line and "internal error" not in line


@pytest.mark.processes
def test_an_explicit_device_is_measured_on_meta_before_building() -> None:
    done = _capped("trace", f"{SAMPLES}/llama.py:llama2_70b", "--device", "cpu",
                   "--input", "input_ids=int64[1,32]")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "building llama2_70b() on cpu needs about 275.9 GB" in done.stderr


@pytest.mark.processes
def test_a_model_that_cannot_be_measured_is_built_within_the_memory_there_is() -> None:
    """Its CPU build is capped to the memory available: a clear error, not the OOM killer."""
    done = subprocess.run(
        [sys.executable, "-m", "execorder", "trace", "models:HugeUnmeasurable"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("execorder: error: building HugeUnmeasurable() on cpu (it cannot be")
    assert "ran out of the about" in line and "available" in line


def test_ranks_on_one_host_each_get_their_share_of_its_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every rank on a host may build its own copy at once, each reading the same free memory
    first: each gets its share of what the host (and its cgroup) has; an address-space
    limit is each process's own."""
    from execorder.loading import memory

    gb = 10**9
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 10 * gb)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    monkeypatch.setattr(memory, "_address_space_available", lambda: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert memory.available_bytes("cpu") == 10 * gb
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert memory.available_bytes("cpu") == 10 * gb // 4
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 6 * gb)
    assert memory.available_bytes("cpu") == 6 * gb // 4
    monkeypatch.setattr(memory, "_address_space_available", lambda: gb)  # its own: not shared
    assert memory.available_bytes("cpu") == gb


def test_a_model_that_fits_once_but_not_once_a_rank_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each of 100 ranks on this host would build a fortieth of its memory: refused before any
    is built (one alone would fit)."""
    import execorder
    from execorder.errors import MemoryGuardError
    from execorder.loading.memory import available_bytes

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    whole = available_bytes("cpu")
    if whole is None:
        pytest.skip("this platform tells no memory available")
    width = int((whole / 40 / 4) ** 0.5)

    def build() -> torch.nn.Module:
        return torch.nn.Linear(width, width, bias=False)

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "100")
    with pytest.raises(MemoryGuardError) as caught:
        execorder.profile(build, inputs=torch.ones(1, width), device="cpu")
    assert "to each of the 100 ranks on this host" in str(caught.value)
    assert caught.value.needed is not None and caught.value.needed * 1.1 < whole


class _Wide(torch.nn.Module):
    """Small weights, large activations: what a forward holds is 16x the model."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(1024, 1024) for _ in range(8)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the address-space cap is Linux's")
@pytest.mark.parametrize("memory", [None, "sgd"])
def test_a_run_on_cpu_that_outgrows_the_memory_there_is_stops_clearly(
    monkeypatch: pytest.MonkeyPatch, memory: str | None
) -> None:
    """The build fits; what forward (or a training step) holds besides does not: it stops at
    the memory there is, with what to do, not at the kernel's out-of-memory killer. Here
    the memory there is is made 1 GB, and the forward holds 2 GB."""
    import execorder
    from execorder.errors import MemoryGuardError
    from execorder.loading import memory as guard

    monkeypatch.setattr(guard, "available_bytes", lambda device: 10**9)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    x = torch.ones(32768, 1024)
    with pytest.raises(MemoryGuardError) as caught:
        execorder.profile(_Wide, inputs=x, device="cpu", memory=memory)
    assert str(caught.value).startswith("a forward of _Wide() on cpu ran out of the about 1.0 GB")
    assert "run it on the meta device (device='meta'), where memory measures" in str(caught.value)
    report = execorder.profile(_Wide, inputs=torch.ones(256, 1024), device="cpu", memory=memory)
    assert report.report.summary.params_used == 16  # a run that fits runs as before
