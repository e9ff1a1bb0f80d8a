"""Every shell command of the README and the guides runs as written.

The ```bash blocks of ``README.md`` and ``docs/guides/*.md`` are split into commands (a command
continues over a line that ends in ``\\`` and over an open quote, as in a shell). Each file gets
one temporary working directory (a module-scoped fixture) holding a copy of ``recipes/``, since the
docs' commands run from the root of a clone. In that directory the file's commands run in order:

* ``quadmix-stream …``, ``python …`` and ``torchrun …`` must exit with status 0;
* ``export NAME=value …`` sets variables for the file's later commands;
* a command that ends with ``&`` starts in the background (when it names a port with ``-p N``,
  the next command waits until something listens there) and is stopped when the file is done.

Install commands (``pip``, ``uv``) are never run: they would change the test environment.
A command whose last line ends with :data:`NOT_RUN` followed by a reason and ``)`` is skipped.
The marker is for what cannot run on a test machine (a GPU, several machines, a corpus that is
not in the repository, an hour-long run, the test suite itself), and the reason says which.

The commands run with Python's bytecode cache on, in a folder of the test's own
(``PYTHONPYCACHEPREFIX``), as on a user's machine: where ``PYTHONDONTWRITEBYTECODE`` is set, every
command would otherwise compile torch and transformers anew (about twice the time).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guides").glob("*.md"))]
NOT_RUN = "# (not run by the tests: "
RUN = ("quadmix-stream", "python", "torchrun")
INSTALL = ("pip", "uv")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Command:
    file: Path
    line: int  # 1-based line of the command's first line in its file
    text: str  # as written, continuation lines included

    @property
    def skipped(self) -> bool:
        return self.text.rstrip().splitlines()[-1].rstrip().endswith(")") and (
            NOT_RUN in self.text.rstrip().splitlines()[-1]
        )

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def kind(self) -> str:
        words = self.words
        if not words:
            return "empty"
        if words[0] in INSTALL:
            return "install"
        if words[0] == "export":
            return "export"
        if self.text.rstrip().split("#")[0].rstrip().endswith("&") or "&" in words[-1:]:
            return "background"
        if words[0] in RUN:
            return "run"
        return "unknown"


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def commands_of(path: Path) -> list[Command]:
    """The commands of the file's ```bash blocks, in order."""
    out: list[Command] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        i += 1
        pending: list[str] = []
        start = 0
        while i < len(lines) and lines[i].strip() != "```":
            if not pending:
                start = i + 1
                if not lines[i].strip() or lines[i].lstrip().startswith("#"):
                    i += 1
                    continue
            pending.append(lines[i])
            text = "\n".join(pending)
            if _complete(text):
                out.append(Command(path, start, text))
                pending = []
            i += 1
        assert not pending, f"{path.name}:{start}: a command does not end inside its block"
        i += 1
    return out


ALL = [c for f in FILES for c in commands_of(f)]


def _id(c: Command) -> str:
    return f"{c.file.relative_to(ROOT)}:{c.line}"


def test_every_command_is_run_or_marked():
    """Nothing is left out silently: each command is of a kind this test runs, or marked."""
    assert any(c.file.name == "README.md" for c in ALL) and len(FILES) > 1
    for c in ALL:
        if c.skipped:
            reason = c.text.rstrip().splitlines()[-1].split(NOT_RUN, 1)[1]
            assert len(reason) > 10, f"{_id(c)}: say why it is not run"
            continue
        assert c.kind in ("run", "export", "background", "install"), (
            f"{_id(c)}: this test does not know how to run {c.words[:1]}; "
            f"use {RUN}, export, a background command, or mark it with '{NOT_RUN}why)'"
        )


class Workdirs:
    """One working directory per documentation file, its variables and background processes."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pycache = base / "pycache"
        self.dirs: dict[Path, Path] = {}
        self.env: dict[Path, dict[str, str]] = {}
        self.background: list[subprocess.Popen] = []
        self.wait_port: dict[Path, int | None] = {}
        self.failed: dict[Path, str] = {}

    def of(self, doc: Path) -> Path:
        if doc not in self.dirs:
            d = self.base / doc.stem
            d.mkdir()
            shutil.copytree(ROOT / "recipes", d / "recipes")
            self.dirs[doc] = d
            bindir = str(Path(sys.executable).parent)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            self.env[doc] = {
                **env,
                "PYTHONPYCACHEPREFIX": str(self.pycache),
                "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
                "QUADMIX_CACHE": str(d / ".cache" / "quadmix"),
                "HF_HOME": str(d / ".cache" / "huggingface"),
                "HF_HUB_OFFLINE": "1",
                "MPLBACKEND": "Agg",
                "QUADMIX_PROGRESS_S": "30",
            }
        return self.dirs[doc]

    def close(self) -> None:
        for p in self.background:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    w = Workdirs(tmp_path_factory.mktemp("docs"))
    yield w
    w.close()


def _wait_for_port(port: int, timeout_s: float = 60) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout_s:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize("cmd", ALL, ids=[_id(c) for c in ALL])
def test_command_runs(cmd: Command, workdirs: Workdirs):
    cwd = workdirs.of(cmd.file)
    env = workdirs.env[cmd.file]
    if cmd.file in workdirs.failed:
        pytest.skip(f"an earlier command of this file failed: {workdirs.failed[cmd.file]}")
    if cmd.skipped or cmd.kind in ("install", "empty"):
        pytest.skip("marked as not run" if cmd.skipped else "install commands are not run")
    port = workdirs.wait_port.pop(cmd.file, None)
    if port is not None:
        _wait_for_port(port)
    if cmd.kind == "export":
        for word in cmd.words[1:]:
            name, _, value = word.partition("=")
            env[name] = value
        return
    if cmd.kind == "background":
        p = subprocess.Popen(["bash", "-c", cmd.text], cwd=cwd, env=env, start_new_session=True)
        workdirs.background.append(p)
        m = re.search(r"\s-p\s+(\d+)", cmd.text)
        workdirs.wait_port[cmd.file] = int(m.group(1)) if m else None
        return
    assert cmd.kind == "run", f"{_id(cmd)}: not a command this test runs"
    t0 = time.monotonic()
    r = subprocess.run(
        ["bash", "-c", cmd.text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if r.returncode != 0:
        workdirs.failed[cmd.file] = _id(cmd)
    assert r.returncode == 0, (
        f"{_id(cmd)} exited {r.returncode} after {time.monotonic() - t0:.0f} s:\n{cmd.text}\n"
        f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    )
