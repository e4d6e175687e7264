"""Journey tests: the README's commands and snippets, run as a user runs them (a subprocess in a fresh
directory, the installed ``lrs`` script, default options such as the default logger)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIGS = ROOT / "examples" / "configs"


def run(cmd: list[str], cwd: Path, timeout: float = 240, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` (``lrs`` / ``python`` resolve to this environment's); fail with its output
    when the exit status is not in ``ok``."""
    exe = {"lrs": str(BIN / "lrs"), "python": sys.executable}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run([exe.get(cmd[0], cmd[0]), *cmd[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if proc.returncode not in ok:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


_WARNING = re.compile(r"\.py:\d+: |Warning: |^W\d{4} ")


# Lightning 2.6 prints these in every project on this torch, whatever the user does (``lrs`` hides them)
LIGHTNING_NOISE = re.compile(r"`tensorboardX` has been removed as a dependency|isinstance\(treespec, LeafSpec\)` is deprecated")


def warnings_in(text: str, allow: re.Pattern | None = None) -> list[str]:
    """Lines of ``text`` that are warnings: Python's (``file.py:12: ...``, ``UserWarning: ...``) or
    torch's logging (``W1202 ...``), except those matching ``allow``."""
    return [line for line in text.splitlines() if _WARNING.search(line) and not (allow and allow.search(line))]
