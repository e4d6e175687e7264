"""The demo's closing summary: a short table on the terminal, ``summary.json`` and ``summary.png``
(training curve, quantization, pruning and optimizer results) in the run directory."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["summary_rows", "write_summary"]


def _f(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def summary_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    """``(what, result)`` rows of the closing table, one per capability that ran."""
    t, steps = res["test"], res.get("steps", {})
    rows = [("DLRM, hybrid Muon", f"{res['train_rows']:,} rows in {res['fit_seconds']:.0f} s")]
    for task, bayes in res["bayes_auc"].items():
        rows.append((f"  test AUC {task}", f"{_f(t[f'test_auc_{task}'])} (planted model {_f(bayes)}), NE {_f(t[f'test_ne_{task}'])}"))
    if "quant" in steps:
        q, b = steps["quant"], steps["quant"]["budget"]
        rows.append(("int8 artifact (ONNX)", f"{_f(q['bytes_ratio'], 3)}x the fp32 bytes, AUC {_f(q['auc_int8'])} vs {_f(q['auc_fp32'])}"))
        plan = (f"met, ΔNE {100 * b['ne_rel_delta_confirm']:+.3f}% on confirmation rows, "
                f"{_f(b['bytes_ratio'], 3)}x the bytes" if b.get("budget_met") else "not met (refused)")  # fmt: skip
        rows.append(("0.1% NE budget plan", plan))
    if "fiited" in steps:
        f = steps["fiited"]
        rows.append(("FIITED, 90% pruned", f"{_f(f['memory_ratio'], 3)}x the table bytes, AUC drop {_f(f['auc_drop'])}"))
    if "optim" in steps:
        rows.append(("optimizers (val AUC)", ", ".join(f"{k.split()[0]} {_f(v['val_auc'])}" for k, v in steps["optim"].items())))
    if "multibalance" in steps:
        m = steps["multibalance"]
        rows.append(("MultiBalance test NE", ", ".join(f"{t}: {_f(m['sum'][t])} -> {_f(m['multibalance'][t])}" for t in m["sum"])))
    if "dct" in steps:
        d = steps["dct"]
        rows.append(("DCT, 2 processes", f"{_f(d['dp_compression_ratio'], 1)}x fewer gradient bytes, val AUC {_f(d['val_auc'])}"))
    return rows


def _curve(path: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {"train_loss": [], "val_auc": []}
    if not Path(path).is_file():
        return out
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for key in out:
                if row.get(key):
                    out[key].append((int(row["step"]), float(row[key])))
    return out


def _plot(res: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = res.get("steps", {})
    fig = Figure(figsize=(12, 8))
    FigureCanvasAgg(fig)
    (a1, a2), (a3, a4) = fig.subplots(2, 2)
    curve = _curve(res["metrics_csv"])
    if curve["train_loss"]:
        a1.plot(*zip(*curve["train_loss"]), color="tab:blue", alpha=0.6, label="train loss")
    a1.set_xlabel("step")
    a1.set_ylabel("train loss (sum over tasks)")
    a1.set_title("Reference DLRM training")
    if curve["val_auc"]:
        ax = a1.twinx()
        ax.plot(*zip(*curve["val_auc"]), "o-", color="tab:green", label="val AUC (click)")
        ax.set_ylabel("val AUC")
        ax.legend(loc="lower right", fontsize=8)
    a1.legend(loc="upper right", fontsize=8)
    if "quant" in steps:
        q, b = steps["quant"], steps["quant"]["budget"]
        names, sizes = ["fp32", "int8"], [1.0, q["bytes_ratio"]]
        if b.get("budget_met"):
            names.append("0.1% NE plan")
            sizes.append(b["bytes_ratio"])
        a2.bar(names, sizes, color=["gray", "tab:blue", "tab:green"][: len(names)])
        for i, v in enumerate(sizes):
            a2.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=9)
        a2.set_ylabel("model bytes / fp32 bytes")
        a2.set_title(f"Quantized artifact: AUC {q['auc_int8']:.4f} vs fp32 {q['auc_fp32']:.4f}")
    if "fiited" in steps:
        f = steps["fiited"]
        a3.bar(["dense", "FIITED 90%"], [1.0, f["memory_ratio"]], color=["gray", "tab:orange"])
        a3.set_ylabel("embedding bytes / dense")
        a3.set_title(f"FIITED: val AUC {f['fiited_auc']:.4f} vs dense {f['dense_auc']:.4f}")
    if "optim" in steps:
        o = steps["optim"]
        a4.bar([k.split()[0] for k in o], [v["val_auc"] for v in o.values()], color="tab:purple")
        lo = min(v["val_auc"] for v in o.values())
        a4.set_ylim(max(0.5, lo - 0.02), max(v["val_auc"] for v in o.values()) + 0.01)
        a4.set_ylabel("val AUC")
        a4.set_title("Optimizers, same data and seed")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    try:
        return float(x)  # tensors and numpy scalars
    except (TypeError, ValueError):
        return str(x)


def write_summary(res: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Print the closing table; write ``summary.json`` and ``summary.png`` into ``out_dir``."""
    rows = summary_rows(res)
    width = max(len(r[0]) for r in rows)
    print("\nlightning-recsys demo: summary")
    for what, result in rows:
        print(f"  {what:<{width}}  {result}")
    paths = {"json": out_dir / "summary.json", "png": out_dir / "summary.png"}
    data = {k: v for k, v in res.items() if k != "datamodule"}
    paths["json"].write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    _plot(res, paths["png"])
    print(f"  {'written':<{width}}  {paths['json']}, {paths['png']}")
    return paths
