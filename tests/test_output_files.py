"""--output as a careful Unix tool: links, FIFOs, devices, permissions, failures."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from execorder.cli import app
from execorder.errors import OutputFileError
from execorder.output import files

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SEED = f"{SAMPLES}/seed.py:Model"
TRACE = ["trace", SEED, "-c", "run_all_layers=true", "-f", "json"]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_symlink_stays_a_link_and_its_target_is_written(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    result = invoke(*TRACE, "-o", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["kind"] == "report"
    assert f"report written to {link}" in result.stderr


def test_a_fifo_is_written_into_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    result = invoke(*TRACE, "-o", str(fifo))
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(received[0])["kind"] == "report"


def test_dev_null_stays_a_device() -> None:
    result = invoke(*TRACE, "-o", os.devnull)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_an_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("old")
    out.chmod(0o640)
    assert invoke(*TRACE, "-o", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_a_new_file_gets_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert invoke(*TRACE, "-o", str(tmp_path / "new.json")).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


def test_ctrl_c_while_writing_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report.json"
    out.write_text("old")

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "chmod", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write(out, "new")
    assert out.read_text() == "old" and _leftovers(tmp_path) == []


@pytest.mark.processes
def test_a_file_size_limit_is_an_error_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("old")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "from execorder.cli import main\n"
        f"sys.argv = ['execorder', *{[*TRACE, '-o', str(out)]!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"execorder: error: --output {out}: File too large")
    assert out.read_text() == "old" and _leftovers(tmp_path) == []


def test_the_baseline_being_compared_is_never_written_over(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    assert invoke(*TRACE, "-o", str(base)).exit_code == 0
    before = base.read_text()
    result = invoke(*TRACE, "--baseline", str(base), "-o", str(base))
    assert result.exit_code == 2 and "is the --baseline" in result.stderr
    assert base.read_text() == before
    table = invoke("trace", SEED, "-c", "run_all_layers=true", "--baseline", str(base),
                   "--update-baseline", "-o", str(base))  # fmt: skip
    assert table.exit_code == 2 and "use --format json" in table.stderr
    same = invoke(*TRACE, "--baseline", str(base), "--update-baseline", "-o", str(base))
    assert same.exit_code == 0, same.output
    assert json.loads(base.read_text())["kind"] == "report"


def _model_file(folder: Path, name: str = "net") -> Path:
    source = folder / f"{name}.py"
    source.write_text((SAMPLES / "seed.py").read_text())
    return source


def test_the_models_own_file_is_never_written_over(tmp_path: Path) -> None:
    model = _model_file(tmp_path)
    before = model.read_text()
    target = f"{model}:Model"
    for args in (
        ("trace", target, "-o", str(model)),
        ("trace", target, "--baseline", str(model), "--update-baseline"),
        ("fsdp", target, "-o", str(model)),
        ("trace", SEED, "--inputs", f"{model}:Model", "-o", str(model)),
    ):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert "which writing would replace; write elsewhere" in result.stderr, result.stderr
        assert model.read_text() == before
    named = invoke("trace", target, "--baseline", str(model), "--update-baseline")
    assert f"--baseline {model} is the model's file (TARGET)" in named.stderr


def test_a_module_the_run_imported_is_never_written_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dotted target's file is known only once imported: the write refuses it.
    model = _model_file(tmp_path, "dotted_net")
    before = model.read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "dotted_net", raising=False)
    result = invoke("trace", "dotted_net:Model", "-c", "run_all_layers=true", "-o", "dotted_net.py")
    assert result.exit_code == 2
    assert "is Python source this run imported" in result.stderr
    assert model.read_text() == before and _leftovers(tmp_path) == []
    with pytest.raises(OutputFileError, match="Python source this run imported"):
        files.write(Path(files.__file__), "not a module")


def test_update_baseline_writes_over_baselines_only(tmp_path: Path) -> None:
    config = tmp_path / "package.json"  # a file of another tool, named by mistake
    config.write_text('{"name": "app", "version": "1.0.0"}\n')
    result = invoke(*TRACE, "--baseline", str(config), "--update-baseline")
    assert result.exit_code == 2 and "is not an execorder report" in result.stderr
    assert config.read_text() == '{"name": "app", "version": "1.0.0"}\n'
    # A baseline of another schema version is what --update-baseline is for; an
    # empty file holds nothing to lose.
    old, empty = tmp_path / "old.json", tmp_path / "empty.json"
    assert invoke(*TRACE, "-o", str(old)).exit_code == 0
    old.write_text(old.read_text().replace('"schema_version": 1', '"schema_version": 0'))
    empty.touch()
    for baseline in (old, empty):
        written = invoke(*TRACE, "--baseline", str(baseline), "--update-baseline")
        assert written.exit_code == 0, written.stderr
        assert json.loads(baseline.read_text())["schema_version"] == 1


def test_a_report_being_compared_is_never_written_over(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    assert invoke(*TRACE, "-o", str(old)).exit_code == 0
    new.write_text(old.read_text())
    for kept, what in ((old, "OLD"), (new, "NEW")):
        result = invoke("diff", str(old), str(new), "-o", str(kept))
        assert result.exit_code == 2 and f"is the {what} report" in result.stderr
        assert json.loads(kept.read_text())["kind"] == "report"


def test_a_missing_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(OutputFileError, match="does not exist"):
        files.check_writable(tmp_path / "no" / "report.json")


def test_a_full_disk_is_an_error_and_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    out = tmp_path / "report.json"
    out.write_text("old")
    real_replace = files.os.replace

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(OutputFileError, match="No space left on device"):
        files.write(out, "new")
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert out.read_text() == "old" and _leftovers(tmp_path) == []
