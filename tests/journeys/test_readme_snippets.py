"""Every Python block of the README is runnable: it is marked with the example script that holds it
(``<!-- example: examples/readme/NAME.py -->``), each of its lines is in that script, and the script
runs as a user runs it (``python NAME.py`` in a fresh directory, default Trainer options)."""

from __future__ import annotations

import re
import shutil

import pytest

from .conftest import LIGHTNING_NOISE, ROOT, run, warnings_in

_BLOCK = re.compile(r"(?:<!-- example: (?P<script>\S+) -->\n)?```python\n(?P<code>.*?)```", re.S)
BLOCKS = [(m.group("script"), m.group("code")) for m in _BLOCK.finditer((ROOT / "README.md").read_text())]
SCRIPTS = sorted({s for s, _ in BLOCKS if s})


def test_every_python_block_is_held_by_an_example_script():
    assert BLOCKS, "the README has no Python blocks"
    for script, code in BLOCKS:
        assert script, f"a README Python block has no '<!-- example: ... -->' marker:\n{code}"
        lines = {line.strip() for line in (ROOT / script).read_text().splitlines()}
        missing = [line for line in code.splitlines() if line.strip() and line.strip() not in lines]
        assert not missing, f"{script} does not hold these README lines: {missing}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_readme_example_runs(script, tmp_path):
    shutil.copy(ROOT / script, tmp_path)
    proc = run(["python", (ROOT / script).name], tmp_path, timeout=400)
    # QuantizationMonitor warns by design when the int8 twin goes over budget
    assert warnings_in(proc.stderr, allow=re.compile(f"{LIGHTNING_NOISE.pattern}|QuantizationMonitor \\(step")) == [], proc.stderr[-3000:]
