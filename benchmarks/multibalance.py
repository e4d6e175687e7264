"""Benchmark: plain sum of task losses vs MultiBalance vs parameter-level MetaBalance.

Two data sets: the two-task synthetic Criteo-like data with very different task scales (clicks 25%,
conversions 1%, one pass over the data) and MovieLens-100K (``like`` / ``five_star``). Each method
trains the same ``RecsysModule(arch="multitask")`` from the same seeds on the same batches, in turn
(sum, MultiBalance, MetaBalance for seed 0, then seed 1, ...). We report test NE and AUC per task
(mean, spread and per-seed values) and training-step throughput from short interleaved runs timed
inside the training loop by a callback (median of per-round ratios). The target task is the rare one (``conversion``, ``five_star``).

    python benchmarks/multibalance.py [--quick] [--out PATH] [--threads N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import parse_args, write_results  # noqa: E402
from lightning_recsys.callbacks.multibalance import MultiBalance  # noqa: E402
from lightning_recsys.data import SyntheticCTRDataModule  # noqa: E402
from lightning_recsys.models import RecsysModule  # noqa: E402

METHODS = ("sum", "multibalance", "metabalance")
# anchor "max": every task's gradient pulled towards the largest task gradient (the rare task's is smaller)
BALANCE = {"relax_factor": 0.7, "beta": 0.9, "anchor": "max"}


def _callbacks(method: str) -> list[pl.Callback]:
    if method == "sum":
        return []
    level = "representation" if method == "multibalance" else "parameter"
    return [MultiBalance(level=level, **BALANCE)]


def _module(spec: Any, lr: float, seed: int) -> RecsysModule:
    torch.manual_seed(seed)
    return RecsysModule(
        feature_spec=spec, arch="multitask", embedding_dim=16, bottom_mlp=(64,), shared_mlp=(128, 64),
        tower_mlp=(32,), optimizer=lambda p: torch.optim.Adam(p, lr=lr),
    )  # fmt: skip


def _trainer(callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks, **kwargs,
    )  # fmt: skip


class _StepTimer(pl.Callback):
    """Wall time of the training steps after ``warmup`` steps (excludes Trainer set-up and testing)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seen = 0
        self.t0 = self.t1 = 0.0
        self.samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seen >= self.warmup:
            self.samples += batch.batch_size
            self.t1 = time.perf_counter()
        self.seen += 1

    @property
    def samples_per_s(self) -> float:
        return self.samples / (self.t1 - self.t0)


def _loaders(data: Any) -> tuple[Any, Any]:
    """(train, test) loaders: a list of pre-generated batches (synthetic) or a data module's loaders."""
    if isinstance(data, tuple):
        return DataLoader(data[0], batch_size=None), DataLoader(data[1], batch_size=None)
    data.setup("fit")
    return data.train_dataloader(), data.test_dataloader()


def throughput(train: Any, spec: Any, lr: float, rounds: int, steps: int, warmup: int = 3) -> dict[str, Any]:
    """Training samples/s per method from short runs interleaved round by round (order rotated each round).

    The machine is shared, so the ratios are medians of per-round ratios (each round's runs are seconds
    apart and see about the same load).
    """
    speed: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(rounds):
        for method in METHODS[r % 3 :] + METHODS[: r % 3]:
            timer = _StepTimer(warmup)
            trainer = _trainer([*_callbacks(method), timer], max_steps=warmup + steps, limit_val_batches=0)
            trainer.fit(_module(spec, lr, 0), train_dataloaders=train)
            speed[method].append(timer.samples_per_s)
    per_round = {m: [a / b for a, b in zip(speed[m], speed["sum"])] for m in METHODS}
    ratio = {m: statistics.median(v) for m, v in per_round.items()}
    return {"samples_per_s": {m: statistics.median(v) for m, v in speed.items()}, "ratio_vs_sum": ratio, "ratio_per_round": per_round}


def run_dataset(
    name: str, make_data, spec, target: str, seeds: list[int], epochs: int, lr: float, rounds: int, steps: int
) -> dict[str, Any]:
    """Train every method from every seed (methods in turn per seed): test NE/AUC, mean and spread
    (population std) over seeds; then :func:`throughput` on the first seed's training data."""
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for seed in seeds:
        data = make_data(seed)
        for method in METHODS:
            train, test = _loaders(data)
            pl.seed_everything(seed, verbose=False)
            module = _module(spec, lr, seed)
            trainer = _trainer(_callbacks(method), max_epochs=epochs, limit_val_batches=0)
            trainer.fit(module, train_dataloaders=train)
            runs[method].append({k: float(v) for k, v in trainer.test(module, test, verbose=False)[0].items()})
    speed = throughput(_loaders(make_data(seeds[0]))[0], spec, lr, rounds, steps)
    out: dict[str, Any] = {}
    for method, results in runs.items():
        out[method] = {"samples_per_s": speed["samples_per_s"][method]}
        for t in spec.tasks:
            entry = {}
            for metric in ("ne", "auc"):
                values = [r[f"test_{metric}_{t}"] for r in results]
                entry[metric] = statistics.fmean(values)
                entry[f"{metric}_std"] = statistics.pstdev(values)
                entry[f"{metric}_per_seed"] = values
            out[method][t] = entry

    def gain(method: str) -> tuple[float, list[float]]:  # relative NE improvement of the target task
        base, new = runs["sum"], runs[method]
        per_seed = [(b[f"test_ne_{target}"] - n[f"test_ne_{target}"]) / b[f"test_ne_{target}"] for b, n in zip(base, new)]
        return (out["sum"][target]["ne"] - out[method][target]["ne"]) / out["sum"][target]["ne"], per_seed

    mb_gain, mb_seeds = gain("multibalance")
    meta_gain, meta_seeds = gain("metabalance")
    ratios = {
        "throughput_ratio_vs_sum": speed["ratio_vs_sum"]["multibalance"],
        "throughput_ratio_vs_sum_per_round": speed["ratio_per_round"]["multibalance"],
        "metabalance_throughput_ratio_vs_sum": speed["ratio_vs_sum"]["metabalance"],
        "target_task_ne_gain_vs_sum": mb_gain,
        "target_task_ne_gain_vs_sum_per_seed": mb_seeds,
        "target_task_ne_gain_vs_sum_std": statistics.pstdev(mb_seeds),
        "metabalance_target_task_ne_gain_vs_sum": meta_gain,
        "metabalance_target_task_ne_gain_vs_sum_per_seed": meta_seeds,
    }
    print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"target_task": target, "methods": out, "ratios": ratios}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("multibalance", argv)
    quick = args.quick
    syn_cfg = dict(
        num_train=32_768 if quick else 262_144, num_val=512, num_test=16_384 if quick else 65_536,
        batch_size=512, max_rows=2_000, num_sparse=8, base_rates=(0.25, 0.01),
    )  # fmt: skip

    def synthetic(seed: int) -> tuple[list, list]:
        dm = SyntheticCTRDataModule(seed=seed, **syn_cfg)
        n_train, n_test = syn_cfg["num_train"] // 512, syn_cfg["num_test"] // 512
        return [dm.make_batch("train", i)[0] for i in range(n_train)], [dm.make_batch("test", i)[0] for i in range(n_test)]

    lr = 1e-3
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    syn_spec = SyntheticCTRDataModule(**syn_cfg).feature_spec
    rounds, steps = (3, 20) if quick else (15, 40)
    syn = run_dataset("synthetic", synthetic, syn_spec, "conversion", seeds, epochs=1, lr=lr, rounds=rounds, steps=steps)

    # throughput only, on the data module's default width (26 sparse features, like Criteo): a wider
    # shared bottom, the same towers; MultiBalance's extra work is in the towers
    wide_cfg = {**syn_cfg, "num_sparse": 26, "num_train": 512 * (steps + 3)}
    wide_dm = SyntheticCTRDataModule(**wide_cfg)
    wide_train = DataLoader([wide_dm.make_batch("train", i)[0] for i in range(steps + 3)], batch_size=None)
    wide = throughput(wide_train, wide_dm.feature_spec, lr, rounds=max(2, rounds * 2 // 3), steps=steps)
    print("[synthetic, 26 sparse features] throughput", wide, flush=True)

    from lightning_recsys.data import MovieLens100KDataModule

    def movielens(seed: int) -> MovieLens100KDataModule:
        return MovieLens100KDataModule(download=True, batch_size=512, seed=seed)

    ml_epochs = 1 if quick else 2
    ml = run_dataset("movielens-100k", movielens, movielens(0).feature_spec, "five_star", seeds[:3], epochs=ml_epochs, lr=lr, rounds=rounds, steps=steps)
    config = {
        "synthetic": {**syn_cfg, "target_task": "conversion", "epochs": 1, "seeds": seeds},
        "synthetic_26_sparse_features": "throughput only: same as synthetic with num_sparse=26",
        "movielens_100k": {"batch_size": 512, "target_task": "five_star", "epochs": ml_epochs, "seeds": seeds[:3]},
        "balance": BALANCE,
        "optimizer": f"Adam(lr={lr})",
        "model": "RecsysModule(arch='multitask', embedding_dim=16, bottom_mlp=(64,), shared_mlp=(128, 64), tower_mlp=(32,))",
        "timing": f"{rounds} rounds of {steps}-step runs per method (after 3 warm-up steps), order rotated per round; "
        "ratios are medians of per-round ratios",
    }
    metrics = {"synthetic": syn["methods"]["multibalance"], "movielens_100k": ml["methods"]["multibalance"]}
    anchors = {f"{ds}/{m}": d["methods"][m] for ds, d in (("synthetic", syn), ("movielens_100k", ml)) for m in ("sum", "metabalance")}
    ratios = {
        **syn["ratios"],
        "throughput_ratio_vs_sum_26_sparse_features": wide["ratio_vs_sum"]["multibalance"],
        "metabalance_throughput_ratio_vs_sum_26_sparse_features": wide["ratio_vs_sum"]["metabalance"],
        **{f"movielens_{k}": v for k, v in ml["ratios"].items()},
    }
    anchors["synthetic_26_sparse_features/samples_per_s"] = wide["samples_per_s"]
    return write_results(args, name="multibalance", config=config, metrics=metrics, anchors=anchors, ratios=ratios)


if __name__ == "__main__":
    main()
