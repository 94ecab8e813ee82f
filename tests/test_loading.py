"""Loading targets: dotted paths, files, classes, factories, instances, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from execorder.errors import DeviceError, TargetError
from execorder.loading import load_target, split_target

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def test_file_target_builds_on_meta_by_default() -> None:
    loaded = load_target(f"{SAMPLES}/seed.py:Model")
    assert loaded.device == "meta"
    assert loaded.notes == ()
    assert all(p.is_meta for p in loaded.model.parameters())


def test_cpu_device_builds_real_tensors() -> None:
    loaded = load_target(f"{SAMPLES}/seed.py:Model", device="cpu")
    assert loaded.device == "cpu"
    assert not any(p.is_meta for p in loaded.model.parameters())


def test_dotted_target_with_init_kwargs() -> None:
    loaded = load_target("models:NeedsWidth", init_kwargs={"width": 5, "depth": 3})
    assert len(loaded.model.layers) == 3
    assert loaded.model.layers[0].in_features == 5


def test_factory_function_target() -> None:
    loaded = load_target("models:make_needs_width", init_kwargs={"depth": 4})
    assert len(loaded.model.layers) == 4


def test_instance_target_is_used_as_is() -> None:
    import models

    loaded = load_target("models:instance")
    assert loaded.model is models.instance
    assert loaded.device is None


def test_instance_target_rejects_init() -> None:
    with pytest.raises(TargetError, match="module instance, so init_kwargs does not apply"):
        load_target("models:instance", init_kwargs={"width": 2})


def test_meta_failure_falls_back_to_cpu_with_a_note() -> None:
    loaded = load_target("models:NeedsRealTensors")
    assert loaded.device == "cpu"
    assert len(loaded.notes) == 1
    assert "meta device failed" in loaded.notes[0] and "built it on CPU" in loaded.notes[0]


def test_explicit_meta_failure_suggests_cpu() -> None:
    with pytest.raises(TargetError, match=r"on meta failed.*try device='cpu'"):
        load_target("models:NeedsRealTensors", device="meta")


def test_sibling_imports_in_a_target_file(tmp_path: Path) -> None:
    (tmp_path / "blocks_for_sibling_test.py").write_text(
        "import torch\nclass Block(torch.nn.Linear):\n    pass\n"
    )
    (tmp_path / "net.py").write_text(
        "import torch\nfrom blocks_for_sibling_test import Block\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.b = Block(2, 2)\n"
        "    def forward(self, x):\n        return self.b(x)\n"
    )
    loaded = load_target(f"{tmp_path}/net.py:Net")
    assert type(loaded.model.b).__name__ == "Block"


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        ("no_such_pkg.mod:Net", {}, r"no module named 'no_such_pkg.mod'"),
        ("missing/file.py:Net", {}, r"no such file: missing/file.py"),
        ("models:Nope", {}, r"has no attribute 'Nope'; it has: .*KeywordParam"),
        ("models:not_a_module", {}, r"not_a_module is a int, not an nn.Module"),
        (
            "models:NeedsWidth",
            {},
            r"NeedsWidth\(\) needs width: pass init_kwargs=\{'width': \.\.\.\}",
        ),
        ("models:NeedsWidth", {"width": 2, "colour": 1}, r"colour.*it accepts: width, depth"),
        ("models:NeedsWidth", {"width": -1}, r"failed \(models.py:\d+\): ValueError: width must"),
        ("models", {}, r"must be 'package.module:Attr'"),
        ("models:", {}, r"must be 'package.module:Attr'"),
    ],
)
def test_target_errors(target: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        load_target(target, init_kwargs=kwargs)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef broken(:\n    pass\n")
    with pytest.raises(TargetError, match=r"syntax error in .*bad.py, line 3"):
        load_target(f"{bad}:Net")


def test_import_error_inside_user_file(tmp_path: Path) -> None:
    bad = tmp_path / "needs_dep.py"
    bad.write_text("import not_installed_dependency_xyz\n")
    with pytest.raises(TargetError, match=r"importing .*needs_dep\.py failed: ModuleNotFound"):
        load_target(f"{bad}:Net")


def test_unknown_device() -> None:
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        load_target("models:NeedsWidth", init_kwargs={"width": 2}, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="CUDA is not available"):
        load_target("models:NeedsWidth", init_kwargs={"width": 2}, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_builds_on_gpu() -> None:
    loaded = load_target("models:NeedsWidth", init_kwargs={"width": 2}, device="cuda")
    assert all(p.is_cuda for p in loaded.model.parameters())


def test_split_target_keeps_colons_in_paths() -> None:
    assert split_target("C:/models/net.py:Net") == ("C:/models/net.py", "Net")
