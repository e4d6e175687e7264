"""Diagnosis probe (not the benchmark): one dataset, one budget, a few FIITED variants vs dense / uniform.

    python benchmarks/_fiited_probe.py --budget 0.5 --seeds 0 1 2 --variant name='{"prefix": true}' ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import fiited as fb  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="movielens", choices=("movielens", "synthetic"))
    p.add_argument("--budget", type=float, nargs="+", default=[0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--baselines", nargs="*", default=["dense", "uniform"])
    p.add_argument("--variant", action="append", default=[], help='name=JSON of FIITED kwargs (+ "schedule": [start, end, events])')
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.dataset == "movielens":
        cfg = dict(batch_size=1024, dim=32, epochs=a.epochs)
        data = fb.movielens(cfg)
    else:
        cfg = dict(num_train=204_800, num_test=51_200, batch_size=1024, max_rows=20_000, num_sparse=8, dim=32, epochs=1)
        data, _ = fb.synthetic(cfg)
    runs = [(m, m, {}) for m in a.baselines]
    for v in a.variant:
        name, js = v.split("=", 1)
        kw = json.loads(js)
        method = kw.pop("method", "fiited")
        runs.append((name, method, kw))
    for b in a.budget:
        for name, method, kw in runs:
            if method == "dense" and b != a.budget[0]:
                continue
            c = dict(cfg)
            if "schedule" in kw:
                c["schedule"] = tuple(kw.pop("schedule"))
            lr = kw.pop("lr", a.lr)
            c["fiited_kw"] = kw
            t0 = time.perf_counter()
            res = [fb.train_one(method, b, s, lr, data, c)[1] for s in a.seeds]
            aucs = [r["auc"] for r in res]
            print(f"b={b} {name:<22} auc={statistics.mean(aucs):.4f} sd={statistics.pstdev(aucs):.4f} "
                  f"val={statistics.mean(r['val_auc'] for r in res):.4f} bytes={res[0]['embedding_bytes']} "
                  f"seeds={[round(x, 4) for x in aucs]} ({time.perf_counter() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
