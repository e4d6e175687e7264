"""FIITED benchmark: dense vs chunk pruning (90/95/99%) vs row pruning vs a uniformly smaller dimension.

Every candidate trains the same DLRM (same seed, same batches, Adam) with a real Lightning Trainer on
synthetic Criteo-like data and on MovieLens-100K; AUC / NE of the main task on the test split, bytes of
the embedding tables (pool + index for chunked ones), training-time overhead (optimizer state of the
tables, utilities and gradient-norm accumulators) and the steady-state training step time relative to
the dense model (interleaved timing, median). Trained models are timed against the trained dense model;
the chunked-but-unpruned table (FIITED before its first pruning) against an untrained dense twin, since a
fresh Adam state (mostly exact zeros) alone makes a step up to ~1.4x slower on CPU.

    python benchmarks/fiited.py [--quick] [--threads 1] [--skip-movielens]
"""

from __future__ import annotations

import functools
import math
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
from lightning_recsys.callbacks.fiited import FIITED  # noqa: E402
from lightning_recsys.data import SyntheticCTRDataModule  # noqa: E402
from lightning_recsys.embeddings.chunked import ChunkedEmbeddingBase  # noqa: E402
from lightning_recsys.embeddings.convert import chunk_modules  # noqa: E402
from lightning_recsys.metrics.ne import NormalizedEntropy  # noqa: E402
from lightning_recsys.models import DLRM, RecsysModule  # noqa: E402

SPARSITIES = (0.9, 0.95, 0.99)


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
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, DataLoader(train, batch_size=None, shuffle=False))
    module._bench_optimizer = trainer.optimizers[0]
    return time.perf_counter() - t0


def _overhead_bytes(module: RecsysModule, cb: FIITED | None) -> int:
    """Optimizer state of the embedding tables + FIITED's utilities and gradient-norm accumulators."""
    opt = module._bench_optimizer
    params = [p for t in _tables(module) for p in t.parameters()]
    total = tensor_bytes([opt.state[p] for p in params if p in opt.state])
    if cb is not None:
        rows_k = sum(t.num_embeddings * t.num_chunks for t in cb.tables.values())
        total += 2 * 4 * rows_k  # float32 utility + accumulator per chunk
    return total


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


def run_dataset(name: str, spec, train: list, test: list, cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps = len(train) * cfg["epochs"]
    sched = dict(start_step=int(0.1 * steps), end_step=int(0.6 * steps), interval=max(2, steps // 20))
    dim, chunk, lr, seed = cfg["dim"], cfg["chunk"], cfg["lr"], cfg["seed"]
    results: dict[str, dict[str, Any]] = {}
    modules: dict[str, RecsysModule] = {}
    callbacks: dict[str, FIITED] = {}

    def run(label: str, module: RecsysModule, cb: FIITED | None) -> None:
        pl.seed_everything(seed, verbose=False)
        fit_s = _fit(module, train, cfg["epochs"], [cb] if cb else [])
        res = _evaluate(module, test)
        res.update(embedding_bytes=_embedding_bytes(module), training_overhead_bytes=_overhead_bytes(module, cb), fit_seconds=fit_s)
        results[label], modules[label] = res, module
        if cb is not None:
            callbacks[label] = cb
        print(f"[{name}] {label:<14} auc={res['auc']:.4f} ne={res['ne']:.4f} bytes={res['embedding_bytes']} fit={fit_s:.1f}s", flush=True)

    run("dense", _module(spec, dim, lr, seed), None)
    for s in SPARSITIES:
        tag = f"{round(s * 100)}"
        run(f"fiited_{tag}", _module(spec, dim, lr, seed), FIITED(chunk_size=chunk, target_sparsity=s, **sched))
        if s in cfg["baselines_at"]:
            run(f"row_{tag}", _module(spec, dim, lr, seed), FIITED(chunk_size=chunk, target_sparsity=s, granularity="row", **sched))
            rows = sum(t.num_embeddings for t in _tables(modules["dense"]))
            per_row = results[f"fiited_{tag}"]["embedding_bytes"] / (4 * rows)  # FIITED's bytes as float32 columns
            for suffix, small in (("", max(1, math.floor(per_row))), ("_up", math.ceil(per_row))):  # <= and >= bytes
                run(f"uniform_{tag}{suffix}", _module(spec, small, lr, seed), None)
                results[f"uniform_{tag}{suffix}"]["embedding_dim"] = small
    # steady-state step time vs dense on one batch (FIITED tracking utilities). The chunked-but-unpruned
    # table (FIITED before its first pruning) is timed against an untrained dense twin: same init, fresh Adam
    # (a trained model's step time differs from a fresh one's; the trained pair is reported too)
    batch = train[0]
    twins = {"dense_fresh": _module(spec, dim, lr, seed), "chunked_unpruned": _module(spec, dim, lr, seed)}
    chunk_modules(twins["chunked_unpruned"], chunk)
    for m in twins.values():
        m._bench_optimizer = torch.optim.Adam(m.parameters(), lr=lr)
    fns = {
        "dense": _step_fn(modules["dense"], batch, False),
        "dense_fresh": _step_fn(twins["dense_fresh"], batch, False),
        "chunked_unpruned": _step_fn(twins["chunked_unpruned"], batch, True),
    }
    for label in results:
        if label != "dense" and not label.startswith("uniform"):
            fns[label] = _step_fn(modules[label], batch, True)
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=2)
    for label, t in times.items():
        if label in results:
            results[label]["step_time_ratio_vs_dense"] = t / times["dense"]
            results[label]["fit_time_ratio_vs_dense"] = results[label]["fit_seconds"] / results["dense"]["fit_seconds"]
    results["chunked_unpruned"] = {
        "step_time_ratio_vs_dense": times["chunked_unpruned"] / times["dense_fresh"],
        "step_time_ratio_vs_trained_dense": times["chunked_unpruned"] / times["dense"],
        "dense_fresh_vs_trained_dense": times["dense_fresh"] / times["dense"],
    }
    return results


def synthetic(cfg: dict[str, Any]):
    dm = SyntheticCTRDataModule(
        num_train=cfg["num_train"], num_val=1024, num_test=cfg["num_test"], batch_size=cfg["batch_size"],
        max_rows=cfg["max_rows"], num_sparse=cfg["num_sparse"], seed=cfg["seed"],
    )  # fmt: skip
    train = [dm.make_batch("train", i)[0] for i in range(math.ceil(cfg["num_train"] / cfg["batch_size"]))]
    test = [dm.make_batch("test", i)[0] for i in range(math.ceil(cfg["num_test"] / cfg["batch_size"]))]
    return dm.feature_spec, train, test, dm.bayes_auc("test")[dm.feature_spec.tasks[0]]


def movielens(cfg: dict[str, Any]):
    from lightning_recsys.data.movielens import MovieLens100KDataModule

    dm = MovieLens100KDataModule(download=True, batch_size=cfg["batch_size"], seed=cfg["seed"])
    dm.setup("fit")
    train = list(dm.train_dataloader())
    test = list(dm.test_dataloader())
    return dm.feature_spec, train, test


def _summary(res: dict[str, dict[str, Any]]) -> dict[str, float]:
    dense = res["dense"]
    out = {
        "memory_ratio_at_90": res["fiited_90"]["embedding_bytes"] / dense["embedding_bytes"],
        "auc_drop_at_90": dense["auc"] - res["fiited_90"]["auc"],
        "auc_drop_at_95": dense["auc"] - res["fiited_95"]["auc"],
        "auc_drop_at_99": dense["auc"] - res["fiited_99"]["auc"],
        "step_time_ratio_at_90": res["fiited_90"]["step_time_ratio_vs_dense"],
        "step_time_ratio_unpruned": res["chunked_unpruned"]["step_time_ratio_vs_dense"],
    }
    for tag in ("90", "95"):
        if f"row_{tag}" in res:
            out[f"auc_fiited_minus_row_at_{tag}"] = res[f"fiited_{tag}"]["auc"] - res[f"row_{tag}"]["auc"]
        uniform = [res[k]["auc"] for k in (f"uniform_{tag}", f"uniform_{tag}_up") if k in res]
        if uniform:  # against the better of the two neighbouring dimensions (the larger one has more bytes)
            out[f"auc_fiited_minus_uniform_at_{tag}"] = res[f"fiited_{tag}"]["auc"] - max(uniform)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("fiited", argv, extra=lambda p: p.add_argument("--skip-movielens", action="store_true"))
    quick = args.quick
    syn_cfg = dict(
        num_train=40_960 if quick else 614_400, num_test=16_384 if quick else 102_400, batch_size=1024,
        max_rows=5_000 if quick else 20_000, num_sparse=8, dim=32, chunk=4, lr=3e-3, seed=0,
        epochs=1, repeats=5 if quick else 15, baselines_at=(0.9,) if quick else (0.9, 0.95),
    )  # fmt: skip
    ml_cfg = dict(batch_size=1024, dim=32, chunk=4, lr=3e-3, seed=0, epochs=1 if quick else 2, repeats=5 if quick else 15,
                  baselines_at=(0.9,) if quick else (0.9, 0.95))  # fmt: skip
    t0 = time.perf_counter()
    spec, train, test, bayes = synthetic(syn_cfg)
    syn = run_dataset("synthetic", spec, train, test, syn_cfg)
    metrics: dict[str, Any] = {"synthetic": syn}
    anchors: dict[str, Any] = {"bayes_auc_synthetic": bayes}
    ratios: dict[str, Any] = dict(_summary(syn))
    if not args.skip_movielens:
        try:
            ml_spec, ml_train, ml_test = movielens(ml_cfg)
        except (ImportError, FileNotFoundError, OSError) as err:  # reported, not hidden
            metrics["movielens"] = {"error": f"{type(err).__name__}: {err}"}
        else:
            ml = run_dataset("movielens", ml_spec, ml_train, ml_test, ml_cfg)
            metrics["movielens"] = ml
            ratios.update({f"movielens_{k}": v for k, v in _summary(ml).items()})
    anchors["row_pruning"] = {k: v for k, v in syn.items() if k.startswith("row")}
    anchors["uniform_dim"] = {k: v for k, v in syn.items() if k.startswith("uniform")}
    anchors["dense"] = syn["dense"]
    config = {"synthetic": syn_cfg, "movielens": ml_cfg, "wall_seconds": time.perf_counter() - t0}
    return write_results(args, name="fiited", config=config, metrics=metrics, anchors=anchors, ratios=ratios)


if __name__ == "__main__":
    main()
