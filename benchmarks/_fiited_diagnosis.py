"""The FIITED benchmark's diagnosis: each suspect of the gap to the uniform dimension, one change at a time.

Starting from the previous shipped configuration (``PREVIOUS``: chunk 1, prefix rule, floor of one column,
per-access utility), every variant changes one thing; the last ones are the warm start from the uniform
dimension and the configuration now shipped. MovieLens-100K, the benchmark's own harness, data, seeds and
FIITED learning rate; test AUC mean over the seeds per budget (compare with ``uniform_<b>`` of the same run).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

PREVIOUS = dict(chunk_size=1, prefix=True, min_chunks=1, utility_norm="mean")
VARIANTS: dict[str, dict[str, Any]] = {
    "previous": {},
    "threshold_per_table": {"threshold": "per_table"},
    "utility_freq_x_grad": {"utility_norm": "none"},
    "utility_sqrt": {"utility_norm": "sqrt"},
    "prefix_off": {"prefix": False, "min_chunks": 0},
    "prune_later": {"schedule": (0.3, 0.8, 20)},
    "no_readmission": {"readmit": False},
    "chunk_4": {"chunk_size": 4},
    "warm_uniform_free": {"warm_start": "uniform_free"},
    "warm_uniform_floor": {"warm_start": "uniform"},
    "shipped": None,  # the benchmark's FIITED_KW
}


def diagnose(train_one: Callable, data: dict, cfg: dict[str, Any], lr: float, shipped: dict[str, Any], budgets=(0.5, 0.9)) -> dict[str, Any]:
    out: dict[str, Any] = {"base": PREVIOUS, "lr": lr}
    for name, change in VARIANTS.items():
        kw = dict(shipped) if change is None else {**PREVIOUS, **change}
        c = dict(cfg)
        if "schedule" in kw:
            c["schedule"] = kw.pop("schedule")
        c["fiited_kw"] = {**kw, "_replace": True}  # exactly these FIITED arguments
        row = {}
        for b in budgets:
            aucs = [train_one("fiited", b, s, lr, data, c)[1]["auc"] for s in cfg["seeds"]]
            row[f"auc_at_{round(b * 100)}"] = statistics.mean(aucs)
            row[f"auc_std_at_{round(b * 100)}"] = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        out[name] = {"change": change if change is not None else shipped, **row}
        print(f"[diagnosis] {name:<22} " + " ".join(f"{k}={v:.4f}" for k, v in row.items() if "std" not in k), flush=True)
    return out
