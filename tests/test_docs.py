"""The README and docs/ are run: their examples cannot rot.

- ```console blocks: each ``$ command`` runs, in order (in a scratch folder holding a
  copy of sample_models/, 100 columns wide) and must print the lines below
  it; a line ``...`` stands for any lines. Plain ``execorder ...`` commands
  run in this process through Typer's runner; anything else runs in bash.
- ```python blocks run in order, one namespace per file, in a scratch folder
  holding a copy of sample_models/; ```pycon blocks are doctests in the same
  namespace.
- Other blocks (```text, ```yaml) are shown, not run.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from execorder.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
WIDTH = "100"


def _blocks(path: Path) -> list[tuple[str, str, int]]:
    text = path.read_text(encoding="utf-8")
    return [(m[1], m[2], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def _examples() -> list[object]:
    """Every console block: its ``$ command`` lines, each with the output shown under it."""
    found = []
    for path in DOCS:
        for lang, body, line in _blocks(path):
            if lang != "console":
                continue
            parts = re.split(r"^\$ ", body, flags=re.M)[1:]
            commands = [tuple(part.partition("\n")[::2]) for part in parts]
            spawns = any(_spawns(command) for command, _ in commands)
            slow = any(_slow(command) for command, _ in commands)
            marks = [pytest.mark.processes] if spawns else [pytest.mark.slow] if slow else []
            found.append(pytest.param(commands, id=f"{path.name}:{line}", marks=marks))
    return found


def _matches(shown: str, printed: str) -> bool:
    pattern = ""
    for line in shown.rstrip("\n").splitlines():
        pattern += r"(?:.*\n)*?" if line.strip() == "..." else re.escape(line.rstrip()) + r"\n"
    return re.fullmatch(pattern + r"(?:\s*\n)*", printed) is not None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a copy of sample_models/, where the examples run and write."""
    folder = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "sample_models", folder / "sample_models")
    return folder


def _in_process(command: str) -> bool:
    """Whether a console command runs in this process (a plain ``execorder ...``), not in bash."""
    return shlex.split(command)[0] == "execorder" and not re.search(r"[|;&<>]", command)


def _spawns(command: str) -> bool:
    """Whether a console command starts processes: run in bash, or starting ranks."""
    return not _in_process(command) or "--nproc" in shlex.split(command)


def _slow(command: str) -> bool:
    """Whether a console command takes seconds in process: it measures a training step's
    memory, or runs a model at its real size (the 70B shape, torchtitan's)."""
    return "--memory" in command or "llama2_70b" in command or "torchtitan" in command


def _run(command: str, cwd: Path) -> str:
    words = shlex.split(command)
    if _in_process(command):
        result = CliRunner().invoke(app, words[1:], env={"COLUMNS": WIDTH})
        return result.output
    env = {**os.environ, "COLUMNS": WIDTH}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("commands", _examples())
def test_console_example(
    commands: list[tuple[str, str]], scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(scratch)
    for command, shown in commands:
        printed = "".join(line.rstrip() + "\n" for line in _run(command, scratch).splitlines())
        assert _matches(shown, printed), (
            f"$ {command}\n--- the docs show ---\n{shown}\n--- it printed ---\n{printed}"
        )


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_examples(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "sample_models", tmp_path / "sample_models")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "sample_models"))
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for lang, body, line in _blocks(path):
        where = f"{path.name}:{line}"
        if lang == "python":
            exec(compile(body, where, "exec"), namespace)
        elif lang == "pycon":
            test = parser.get_doctest(body, namespace, where, str(path), line)
            runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # a doctest runs on a copy of the namespace
    assert runner.failures == 0, f"{runner.failures} doctest example(s) failed in {path.name}"


def test_every_doc_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in DOCS[1:]:
        assert f"docs/{path.name}" in readme, f"README does not link docs/{path.name}"


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 10_000
