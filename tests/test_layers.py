"""The import contract of ../DESIGN.md, checked on the source: no import against the layer order, no
circle between subpackages, no private name imported across subpackages, and nothing in ``quant``
importing ``models`` except its model-specific lowerings, the pipeline and the CLI."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "lightning_recsys"

#: lower never imports higher; equal layers may import each other as long as no circle forms
LAYERS = {
    "_compat": 0, "_validation": 0, "data": 0, "metrics": 0,
    "embeddings": 1,
    "optim": 2,
    "models": 3,
    "distributed": 4, "strategies": 4,
    "callbacks": 5, "quant": 5,
    "cli": 6, "demo": 6,
    "__init__": 7,
}  # fmt: skip
QUANT_MAY_IMPORT_MODELS = ("quant.export.lowerings", "quant.pipeline", "quant.cli", "quant.checkpoint")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _imports() -> list[tuple[str, str, list[str]]]:
    """``(importing module, imported module, imported names)`` for every import of the package's own
    modules (relative or absolute, at module level or inside functions), names relative to the package."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        mod = _module_name(path)
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                elif (node.module or "").startswith("lightning_recsys"):
                    target = node.module.removeprefix("lightning_recsys").lstrip(".")
                else:
                    continue
                out.append((mod, target or "__init__", [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("lightning_recsys."):
                        out.append((mod, alias.name.removeprefix("lightning_recsys."), []))
    return out


def _top(mod: str) -> str:
    return mod.split(".")[0]


def test_every_subpackage_has_a_layer():
    tops = {_top(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert not tops - set(LAYERS), f"subpackages without a layer in DESIGN.md: {sorted(tops - set(LAYERS))}"


def test_no_import_against_the_layer_order():
    bad = [f"{src} imports {dst}" for src, dst, _ in _imports() if LAYERS[_top(dst)] > LAYERS[_top(src)]]
    assert not bad, "\n".join(bad)


def test_no_circle_between_subpackages():
    edges = defaultdict(set)
    for src, dst, _ in _imports():
        if _top(src) != _top(dst):
            edges[_top(src)].add(_top(dst))

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in edges.get(a, ()))

    circles = sorted(f"{a} <-> {b}" for a in list(edges) for b in edges[a] if reaches(b, a, {b}))
    assert not circles, circles


def test_no_private_name_imported_across_subpackages():
    def home(mod: str) -> str:  # quant's own subpackages count as subpackages too
        parts = mod.split(".")
        return ".".join(parts[:2]) if parts[0] == "quant" and len(parts) > 2 else parts[0]

    bad = [f"{src} imports {[n for n in names if n.startswith('_') and not n.startswith('__')]} from {dst}"
           for src, dst, names in _imports()
           if home(src) != home(dst) and any(n.startswith("_") and not n.startswith("__") for n in names)]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_quant_imports_models_only_in_lowerings_pipeline_and_cli():
    bad = [f"{src} imports {dst}" for src, dst, _ in _imports()
           if _top(src) == "quant" and _top(dst) == "models" and not src.startswith(QUANT_MAY_IMPORT_MODELS)]  # fmt: skip
    assert not bad, "\n".join(bad)
