"""The installed package: importing it prints nothing, and every declared dependency is used."""

from __future__ import annotations

import re
import tomllib

from .conftest import ROOT, run

# distribution name -> the import that uses it (jsonargparse is LightningCLI's parser)
IMPORT_NAMES = {"PyYAML": "yaml", "jsonargparse": "lightning.pytorch.cli"}


def test_import_prints_nothing(tmp_path):
    proc = run(["python", "-c", "import lightning_recsys, lightning_recsys.quant, lightning_recsys.demo"], tmp_path)
    assert proc.stdout == "" and proc.stderr == ""


def test_every_declared_dependency_is_imported_by_the_package():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    source = "\n".join(p.read_text() for p in (ROOT / "lightning_recsys").rglob("*.py"))
    for dep in deps:
        name = re.split(r"[<>=\[ ;]", dep, maxsplit=1)[0]
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {re.escape(module)}\b", source, re.M), f"{name} is declared but never imported"
