"""Every code block of README.md runs, as a reader would run it from the repository root.

What is run, and the rule for what is not (each skipped line is a reported skip with its reason):

- each ```python block is checked for names used before any import or assignment defines them (a
  fast static check that lists them all), then executed whole in a fresh interpreter (``python -c``);
- each line of a ```bash block is split on ``&&`` into commands (``#`` comments dropped). A line
  runs when it holds a ``datasetflow ...`` command and every other command is ``python <script>``
  for a script of the repository; ``datasetflow`` runs as ``python -m datasetflow.cli``. A line is
  skipped when it

  1. contains ``pip install`` (installation one-liners would change the environment);
  2. holds no ``datasetflow`` command, or another kind of command (``python -m pytest``, ``cd``, ...);
  3. names an input file (an argument with a file suffix such as ``.npz``, ``.pt``, ``.yaml``) that
     exists neither in the working copy nor as the output of an earlier command of the same line;
  4. needs a full-size dataset (``mnist``, ``usps``, ...) while the data directory does not hold it.

Everything runs in a temporary working directory that holds a copy of ``examples/`` (README
commands write ``out/...`` and ``examples/data``), with ``DATASETFLOW_DATA_DIR`` pointing at the
shared data, one thread (``OMP_NUM_THREADS=1``, as the README recommends on shared machines) and the
Agg matplotlib backend. A block passes when it exits with status 0.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FILE_SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".yaml", ".yml", ".json", ".csv", ".png")
#: Built-in names that need the data directory, and the file each one reads there.
FULL_DATASETS = {
    "mnist": "mnist_test.npz",
    "fashion-mnist": "fashion_mnist_test.npz",
    "usps": "usps_test.npz",
    "usps:train": "usps_train.npz",
    "cifar10": "cifar10_test.npz",
}
TIMEOUT = 900


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, first code line (1-based) and text."""

    language: str
    line: int
    text: str


def readme_blocks(path: Path = README) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    blocks, language, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)\s*$", line)
        if fence and language is None:
            language, start, body = fence.group(1).lower() or "text", number + 1, []
        elif fence:
            blocks.append(Block(language, start, "\n".join(body)))
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def python_blocks() -> list[Block]:
    return [b for b in readme_blocks() if b.language in ("python", "py")]


def undefined_names(code: str) -> list[str]:
    """Names that a snippet loads but that no import, assignment, definition or argument binds on an
    earlier line (or the same line, for comprehensions); builtins excluded."""
    first_bound: dict[str, int] = {name: 0 for name in dir(builtins)}

    def bind(name: str, line: int) -> None:
        first_bound[name] = min(first_bound.get(name, line), line)

    loads = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bind((alias.asname or alias.name).split(".")[0], node.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bind(node.name, node.lineno)
        elif isinstance(node, ast.arg):
            bind(node.arg, node.lineno)
        elif isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                loads.append(node)
            else:
                bind(node.id, node.lineno)
    return sorted({n.id for n in loads if first_bound.get(n.id, n.lineno + 1) > n.lineno})


def bash_lines() -> list[tuple[int, str]]:
    """``(README line number, line)`` of every non-empty, non-comment line of the bash blocks."""
    out = []
    for block in readme_blocks():
        if block.language not in ("bash", "sh", "shell", "console"):
            continue
        for offset, line in enumerate(block.text.splitlines()):
            if line.strip() and not line.strip().startswith("#"):
                out.append((block.line + offset, line.strip()))
    return out


def commands_of(line: str) -> list[list[str]]:
    """The ``&&``-separated commands of a shell line, each as its arguments (comments removed)."""
    commands, current = [], []
    for token in shlex.split(line, comments=True):
        if token == "&&":
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [*commands, current] if current else commands


def skip_reason(line: str, commands: list[list[str]]) -> str | None:
    """Rules 1 and 2 of the module docstring (the ones that need no working directory)."""
    if "pip install" in line:
        return "rule 1: an installation one-liner (pip install)"
    if not any(c and c[0] == "datasetflow" for c in commands):
        return "rule 2: no datasetflow command"
    for command in commands:
        script = command[0] == "python" and len(command) >= 2 and command[1].endswith(".py")
        if command[0] != "datasetflow" and not (script and (ROOT / command[1]).is_file()):
            return f"rule 2: {shlex.join(command)!r} is neither datasetflow nor a repository script"
    return None


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"})
    env["DATASETFLOW_DATA_DIR"] = str(SHARED_DATA)
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory laid out like the repository root for the README's commands."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit status {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


# ----------------------------------------------------------------------------- the extraction itself
@pytest.mark.fast
def test_readme_has_code_to_run():
    """The extraction finds the README's blocks (so an empty parametrisation cannot pass silently)."""
    assert len(python_blocks()) >= 1
    runnable = [line for number, line in bash_lines() if skip_reason(line, commands_of(line)) is None]
    assert len(runnable) >= 3
    assert commands_of("python a.py && datasetflow flow --out x  # note") == [
        ["python", "a.py"],
        ["datasetflow", "flow", "--out", "x"],
    ]


@pytest.mark.fast
def test_undefined_names_are_found():
    code = "import torch as t\nfrom a import b\nc = b(t, d)\nprint([k for k in c], e)\ne = 1\ndef f(g):\n    return g\n"
    assert undefined_names(code) == ["d", "e"]


@pytest.mark.fast
def test_markdown_blocks_are_extracted_with_their_line_numbers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n\ny = 2\n```\n\n```bash\ndatasetflow datasets\n```\n```\nplain\n```\n")
    assert readme_blocks(page) == [
        Block("python", 3, "x = 1\n\ny = 2"),
        Block("bash", 9, "datasetflow datasets"),
        Block("text", 12, "plain"),
    ]


# ----------------------------------------------------------------------------- the README's blocks
@pytest.mark.fast
@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"python-L{b.line}")
def test_python_block_defines_every_name_it_uses(block: Block):
    missing = undefined_names(block.text)
    assert not missing, f"README.md python block at line {block.line} uses undefined names {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"python-L{b.line}")
def test_python_block_runs(block: Block, workdir: Path):
    result = run([sys.executable, "-c", block.text], workdir)
    assert result.returncode == 0, f"README.md python block at line {block.line}:\n{describe(result)}"


@pytest.mark.slow
@pytest.mark.parametrize(("number", "line"), bash_lines(), ids=[f"bash-L{number}" for number, _ in bash_lines()])
def test_bash_line_runs(number: int, line: str, workdir: Path):
    commands = commands_of(line)
    reason = skip_reason(line, commands)
    if reason:
        pytest.skip(reason)
    for command in commands:  # rules 3 and 4, checked before anything runs
        for name, filename in FULL_DATASETS.items():
            if name in command[1:] and not (SHARED_DATA / filename).is_file():
                pytest.skip(f"rule 4: {name!r} needs {filename} in the data directory {SHARED_DATA}")
    for command in commands:
        for arg in command[1:]:
            if arg.lower().endswith(FILE_SUFFIXES) and not (workdir / arg).exists():
                pytest.skip(f"rule 3: {arg!r} is not in the repository and no earlier command creates it")
        args = [sys.executable, "-m", "datasetflow.cli", *command[1:]] if command[0] == "datasetflow" else command
        if command[0] == "python":
            args = [sys.executable, *command[1:]]
        result = run(args, workdir)
        assert result.returncode == 0, f"README.md line {number}: {shlex.join(command)}\n{describe(result)}"
