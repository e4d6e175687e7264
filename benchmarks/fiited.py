"""FIITED benchmark at equal bytes: dense vs FIITED vs a uniformly smaller dimension vs row pruning vs PEP.

Every candidate trains the same DLRM (same seed, same batches, Adam) with a real Lightning Trainer on
MovieLens-100K (the headline) and on synthetic Criteo-like data, at budgets of 50/75/90/95% of the dense
embedding bytes removed; 3 seeds. Bytes count every method's pool, index, masks and per-row metadata
(``benchmarks/_pruning.py``). Each method gets its own learning rate (picked on the validation split at the
90% budget, seed 0, from ``LRS``). Reported: test AUC / NE (mean, std over seeds), bytes, and the training
step time of FIITED at every budget relative to the trained dense model (interleaved timing, median).
Pareto plots (bytes vs test AUC) go beside the JSON as ``fiited_<dataset>.png``. The full run also measures
the suspects of FIITED's gap to the uniform dimension one by one on MovieLens
(``benchmarks/_fiited_diagnosis.py``, under ``metrics.movielens.diagnosis``).

    python benchmarks/fiited.py [--quick] [--threads 1] [--skip-movielens] [--skip-diagnosis]
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryAUROC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import interleaved_times, parse_args, tensor_bytes, write_results  # noqa: E402
from benchmarks._fiited_diagnosis import diagnose  # noqa: E402
from benchmarks._pruning import pep_attach, pep_budget_masks, pep_bytes, pep_fix_masks  # noqa: E402
from lightning_recsys.callbacks.fiited import FIITED  # noqa: E402
from lightning_recsys.data import SyntheticCTRDataModule  # noqa: E402
from lightning_recsys.embeddings.chunked import ChunkedEmbeddingBase  # noqa: E402
from lightning_recsys.metrics.ne import NormalizedEntropy  # noqa: E402
from lightning_recsys.models import DLRM, RecsysModule  # noqa: E402

BUDGETS = (0.5, 0.75, 0.9, 0.95)
METHODS = ("fiited", "uniform", "row", "pep")
# FIITED as shipped for this benchmark: per-row dimension (chunk 1, prefix rule), warm-started at the uniform
# dimension that fits the budget (kept as the floor of every accessed row), the rest of the budget to the rows
# of highest utility (frequency x gradient norm, the spec's)
FIITED_KW = dict(chunk_size=1, prefix=True, warm_start="uniform", utility_norm="none")
LRS = (1e-3, 3e-3, 1e-2, 3e-2)  # every method picks its own (validation AUC at 90%, seed 0)
PEP_INIT = -8.0  # sigmoid(-8) = 3e-4: below the initial |weights|, so the soft threshold starts almost inactive


def _module(spec, dim: int, lr: float, seed: int) -> RecsysModule:
    torch.manual_seed(seed)
    model = DLRM.from_spec(spec, embedding_dim=dim, bottom_mlp=(64,), top_mlp=(64, 32))
    return RecsysModule(model=model, feature_spec=spec, optimizer=functools.partial(torch.optim.Adam, lr=lr))


def _tables(module: RecsysModule) -> list[torch.nn.Module]:
    return list(module.model.embeddings.tables.values())


def _embedding_bytes(module: RecsysModule) -> int:
    total = 0
    for t in _tables(module):
        total += sum(t.storage_bytes().values()) if isinstance(t, ChunkedEmbeddingBase) else tensor_bytes(t)
    return total


@torch.no_grad()
def _evaluate(module: RecsysModule, batches: list) -> dict[str, float]:
    module.eval()
    auc, ne = BinaryAUROC(), NormalizedEntropy()
    for b in batches:
        logit = module(b)[:, 0]
        y = b.labels[module.tasks[0]]
        auc.update(logit, y.long())
        ne.update(logit, y.long())
    module.train()
    return {"auc": float(auc.compute()), "ne": float(ne.compute())}


def _fit(module: RecsysModule, train: list, epochs: int, callbacks: list) -> float:
    if not isinstance(train, DataLoader):
        train = DataLoader(train, batch_size=None, shuffle=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, train)
    module._bench_optimizer = trainer.optimizers[0]
    return time.perf_counter() - t0


def _step_fn(module: RecsysModule, batch, track: bool):
    for t in _tables(module):
        if isinstance(t, ChunkedEmbeddingBase):
            t.track_grad_norms(track)
    opt = module._bench_optimizer

    def step() -> None:
        loss = sum(module._task_losses(module(batch), batch).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _budget_bytes(dense_bytes: int, b: float) -> int:
    return int(round((1 - b) * dense_bytes))


def train_one(method: str, b: float, seed: int, lr: float, data: dict, cfg: dict) -> tuple[RecsysModule, dict[str, Any]]:
    """Train ``method`` at budget ``b`` (fraction of the dense embedding bytes removed)."""
    spec, train, epochs, dim = data["spec"], data["train"], cfg["epochs"], cfg["dim"]
    rows = sum(spec.cardinalities.values())
    budget = _budget_bytes(rows * dim * 4, b)
    steps = len(train) * epochs
    start, end, events = cfg.get("schedule", (0.1, 0.6, 20))
    sched = dict(start_step=int(start * steps), end_step=int(end * steps), interval=max(2, steps // events))
    pl.seed_everything(seed, verbose=False)
    extra: dict[str, Any] = {}
    cb = None
    if method in ("dense", "uniform"):
        d = dim if method == "dense" else max(1, budget // (rows * 4))
        module = _module(spec, d, lr, seed)
        extra["embedding_dim"] = d
    else:
        module = _module(spec, dim, lr, seed)
    if method == "fiited":
        kw = dict(cfg.get("fiited_kw", {}))
        kw = {k: v for k, v in kw.items() if k != "_replace"} if kw.get("_replace") else {**FIITED_KW, **kw}
        cb = FIITED(target_bytes=budget, **kw, **sched)
    elif method == "row":
        cb = FIITED(target_bytes=budget, chunk_size=dim, prefix=True, **sched)
    t0 = time.perf_counter()
    if method == "pep":
        tables = _tables(module)
        init = [t.weight.detach().clone() for t in tables]
        pep_attach(tables, PEP_INIT)
        _fit(module, train, epochs, [])
        masks = pep_budget_masks(tables, budget)
        pep_fix_masks(tables, masks, init)
        pl.seed_everything(seed, verbose=False)
        _fit(module, train, epochs, [])
        extra["embedding_bytes"] = pep_bytes(masks)
    else:
        _fit(module, train, epochs, [cb] if cb else [])
    extra["fit_seconds"] = time.perf_counter() - t0
    res = {"val_auc": _evaluate(module, data["val"])["auc"], **_evaluate(module, data["test"])}
    res["embedding_bytes"] = extra.pop("embedding_bytes", None) or _embedding_bytes(module)
    res.update(extra, budget_bytes=budget, lr=lr)
    if cb is not None:
        res["fiited_overhead_bytes"] = cb.training_overhead_bytes()
        res["lookup_cache_bytes"] = sum(t.cache_bytes() for t in cb.tables.values())
    return module, res


def run_dataset(name: str, data: dict, cfg: dict[str, Any]) -> dict[str, Any]:
    seeds, lrs = cfg["seeds"], cfg["lrs"]
    best_lr: dict[str, float] = {}
    sweep: dict[str, dict[str, float]] = {}
    for method in ("dense", *METHODS):
        if len(lrs) == 1:
            best_lr[method] = lrs[0]
            continue
        sweep[method] = {str(lr): train_one(method, 0.9, seeds[0], lr, data, cfg)[1]["val_auc"] for lr in lrs}
        best_lr[method] = float(max(sweep[method], key=sweep[method].get))
        print(f"[{name}] lr sweep {method}: {sweep[method]} -> {best_lr[method]}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    keep: dict[str, RecsysModule] = {}
    for seed in seeds:
        for label, method, b in [("dense", "dense", 0.0)] + [(f"{m}_{round(b * 100)}", m, b) for b in BUDGETS for m in METHODS]:
            module, res = train_one(method, b, seed, best_lr[method], data, cfg)
            runs.setdefault(label, []).append(res)
            if seed == seeds[0] and (label == "dense" or method == "fiited"):
                keep[label] = module
            print(f"[{name}] seed {seed} {label:<12} auc={res['auc']:.4f} bytes={res['embedding_bytes']} fit={res['fit_seconds']:.1f}s", flush=True)
    out: dict[str, Any] = {"lr": best_lr, "lr_sweep_val_auc": sweep}
    for label, rs in runs.items():
        aucs = [r["auc"] for r in rs]
        out[label] = {
            "auc_mean": statistics.mean(aucs), "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0, "auc_seeds": aucs,
            "ne_mean": statistics.mean(r["ne"] for r in rs), "embedding_bytes": max(r["embedding_bytes"] for r in rs),
            **{k: v for k, v in rs[0].items() if k not in ("auc", "ne", "val_auc", "embedding_bytes")},
        }  # fmt: skip
    batch = data["train_batches"][0]
    fns = {label: _step_fn(m, batch, label != "dense") for label, m in keep.items()}
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=2)
    for label, t in times.items():
        out[label]["step_time_ratio_vs_dense"] = t / times["dense"]
    return out


def _pareto_plot(name: str, res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = res["dense"]
    for method, marker in zip(METHODS, "osv^"):
        pts = [res[f"{method}_{round(b * 100)}"] for b in BUDGETS]
        ax.errorbar([p["embedding_bytes"] for p in pts], [p["auc_mean"] for p in pts], yerr=[p["auc_std"] for p in pts],
                    marker=marker, capsize=3, label=method)  # fmt: skip
    ax.axhline(dense["auc_mean"], color="k", ls="--", lw=1, label=f"dense ({dense['embedding_bytes']} B)")
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes (pools + indices + masks)")
    ax.set_ylabel("test AUC (mean, std over seeds)")
    ax.set_title(f"FIITED vs baselines at equal bytes: {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def synthetic(cfg: dict[str, Any]) -> tuple[dict, float]:
    dm = SyntheticCTRDataModule(
        num_train=cfg["num_train"], num_val=cfg["num_test"], num_test=cfg["num_test"], batch_size=cfg["batch_size"],
        max_rows=cfg["max_rows"], num_sparse=cfg["num_sparse"], seed=0,
    )  # fmt: skip
    split = {s: [dm.make_batch(s, i)[0] for i in range(math.ceil(n / cfg["batch_size"]))]
             for s, n in (("train", cfg["num_train"]), ("val", cfg["num_test"]), ("test", cfg["num_test"]))}  # fmt: skip
    data = dict(spec=dm.feature_spec, train=split["train"], train_batches=split["train"], val=split["val"], test=split["test"])
    return data, dm.bayes_auc("test")[dm.feature_spec.tasks[0]]


def movielens(cfg: dict[str, Any]) -> dict:
    from lightning_recsys.data.movielens import MovieLens100KDataModule

    dm = MovieLens100KDataModule(download=True, batch_size=cfg["batch_size"], seed=0)
    dm.setup("fit")
    train = dm.train_dataloader()  # reshuffled every epoch (seeded), as a user would train
    return dict(spec=dm.feature_spec, train=train, train_batches=list(train), val=list(dm.val_dataloader()), test=list(dm.test_dataloader()))


def clothing(cfg: dict[str, Any]) -> dict:
    from lightning_recsys.data import ClothingReviewsDataModule

    dm = ClothingReviewsDataModule(download=True, batch_size=cfg["batch_size"], seed=0)
    dm.setup("fit")
    train = dm.train_dataloader()
    return dict(spec=dm.feature_spec, train=train, train_batches=list(train), val=list(dm.val_dataloader()), test=list(dm.test_dataloader()))


def _summary(res: dict[str, Any]) -> dict[str, float]:
    dense = res["dense"]
    out = {"memory_ratio_at_90": res["fiited_90"]["embedding_bytes"] / dense["embedding_bytes"]}
    for b in BUDGETS:
        tag = round(b * 100)
        f = res[f"fiited_{tag}"]
        out[f"auc_drop_at_{tag}"] = dense["auc_mean"] - f["auc_mean"]
        for m in ("uniform", "row", "pep"):
            out[f"auc_fiited_minus_{m}_at_{tag}"] = f["auc_mean"] - res[f"{m}_{tag}"]["auc_mean"]
        out[f"step_time_ratio_at_{tag}"] = f["step_time_ratio_vs_dense"]
    return out


def _extra_args(p) -> None:
    p.add_argument("--skip-movielens", action="store_true")
    p.add_argument("--skip-clothing", action="store_true", help="leave out the clothing reviews (the second real dataset)")
    p.add_argument("--skip-diagnosis", action="store_true", help="leave out the suspects one by one (MovieLens, ~4 min)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("fiited", argv, extra=_extra_args)
    quick = args.quick
    seeds, lrs = ((0,), (3e-3,)) if quick else ((0, 1, 2), LRS)
    syn_cfg = dict(
        num_train=10_240 if quick else 204_800, num_test=8_192 if quick else 51_200, batch_size=1024,
        max_rows=2_000 if quick else 20_000, num_sparse=8, dim=32, epochs=1, seeds=seeds, lrs=lrs, repeats=5 if quick else 15,
    )  # fmt: skip
    ml_cfg = dict(batch_size=1024, dim=32, epochs=1 if quick else 2, seeds=seeds, lrs=lrs, repeats=5 if quick else 15)
    cl_cfg = dict(batch_size=256, dim=32, epochs=1 if quick else 3, seeds=seeds, lrs=lrs, repeats=5 if quick else 15)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    anchors: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    plots = args.out.parent
    if not args.skip_movielens:
        try:
            ml_data = movielens(ml_cfg)
        except (ImportError, FileNotFoundError, OSError) as err:  # reported, not hidden
            metrics["movielens"] = {"error": f"{type(err).__name__}: {err}"}
        else:
            ml = run_dataset("movielens", ml_data, ml_cfg)
            metrics["movielens"] = ml
            if not quick and not args.skip_diagnosis:
                ml["diagnosis"] = diagnose(train_one, ml_data, ml_cfg, ml["lr"]["fiited"], FIITED_KW)
            ratios.update({f"movielens_{k}": v for k, v in _summary(ml).items()})
            if not quick:
                _pareto_plot("MovieLens-100K", ml, plots / "fiited_movielens.png")
    if not args.skip_clothing:
        try:
            cl_data = clothing(cl_cfg)
        except (ImportError, FileNotFoundError, OSError, RuntimeError) as err:  # reported, not hidden
            metrics["clothing"] = {"error": f"{type(err).__name__}: {err}"}
        else:
            cl = run_dataset("clothing", cl_data, cl_cfg)
            metrics["clothing"] = cl
            ratios.update({f"clothing_{k}": v for k, v in _summary(cl).items()})
            if not quick:
                _pareto_plot("Women's E-Commerce Clothing Reviews", cl, plots / "fiited_clothing.png")
    syn_data, bayes = synthetic(syn_cfg)
    syn = run_dataset("synthetic", syn_data, syn_cfg)
    metrics["synthetic"] = syn
    anchors["bayes_auc_synthetic"] = bayes
    ratios.update(_summary(syn))
    if not quick:
        _pareto_plot("synthetic", syn, plots / "fiited_synthetic.png")
    config = {"synthetic": syn_cfg, "movielens": ml_cfg, "clothing": cl_cfg, "budgets": BUDGETS, "fiited": FIITED_KW, "pep_init": PEP_INIT,
              "wall_seconds": time.perf_counter() - t0}  # fmt: skip
    return write_results(args, name="fiited", config=config, metrics=metrics, anchors=anchors, ratios=ratios)


if __name__ == "__main__":
    main()
