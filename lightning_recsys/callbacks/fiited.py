"""FIITED: fine-grained in-training embedding dimension pruning that really frees memory.

Luo et al., "FIITED: Fine-grained In-Training Embedding Dimension optimization" (arXiv 2401.04408);
the algorithm details follow ``shared/specs/fiited.md``. The callback

1. swaps the selected ``nn.Embedding`` / ``nn.EmbeddingBag`` modules of any LightningModule for chunked
   VHPI storage (:mod:`lightning_recsys.embeddings.chunked`) in ``setup``, before the optimizers exist
   (a table whose weight is tied to another module, e.g. a decoder, is refused: use ``pattern``);
2. tracks a utility per chunk, ``u = gamma * u + sum over accesses of ||dL/d chunk||_2`` (decayed once per
   pruning event; the sum runs over the accesses since the previous event);
3. every ``interval`` steps between ``start_step`` and the end of training keeps the highest-utility
   chunks so that the kept fraction follows the schedule (cubic by default) toward the target
   (``target_sparsity`` of the chunks pruned, or a ``target_bytes`` budget for pool + index); a pruned
   chunk comes back only when its utility beats a kept one's by ``readmit_margin`` times the mean kept
   utility (hysteresis: little churn once the schedule ends), with small random values at its row's scale
   and fresh optimizer state; the fraction of kept chunks replaced is logged as ``fiited/churn``;
4. reallocates each pool to exactly its kept chunks and swaps the new parameter into the optimizers,
   remapping every per-slot state tensor (SGD momentum, Adam/AdamW moments, Adagrad sums, ...).

Checkpoints: the model's state dict holds every table's dense ``weight`` (pruned chunks read 0) and the
optimizer state in the same dense layout, so a pruned checkpoint loads into the user's unmodified module
(``MyModule.load_from_checkpoint``, ``Trainer.fit/test(ckpt_path=...)``, ``load_state_dict``) with or
without this callback. The compact layout (and optimizer state without a dense form, e.g. CounterSGD's
per-slot counts) lives in the callback's state: with the callback present the tables are re-pruned on load
and training resumes exactly (:mod:`lightning_recsys.embeddings.checkpoint`).

Under DDP the chunk pools are kept out of DDP's reducer (their shape changes) and the callback averages
their gradients itself before each optimizer step; utilities are summed over ranks at every event, so
every rank takes the same decisions.

Example:
    >>> import lightning.pytorch as pl
    >>> from lightning_recsys.callbacks.fiited import FIITED
    >>> trainer = pl.Trainer(callbacks=[FIITED(target_sparsity=0.9, start_step=100, end_step=1000)])

YAML (LightningCLI)::

    trainer:
      callbacks:
        - class_path: lightning_recsys.callbacks.fiited.FIITED
          init_args: {chunk_size: 4, target_sparsity: 0.9, start_step: 100, end_step: 1000, interval: 50}
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from typing_extensions import override

from ..embeddings.checkpoint import load_optimizer_layout, save_optimizer_layout
from ..embeddings.chunked import ChunkedEmbeddingBase
from ..embeddings.convert import chunk_modules
from .._validation import ConfigurationError, check_choice, check_int, check_number
from .optimizer_state import remap_optimizer_state

__all__ = ["FIITED", "remap_optimizer_state"]

_OWNER = "FIITED: "
_CHOICES = {
    "schedule": ("cubic", "linear", "constant"),
    "readmit_init": ("scaled", "normal", "zeros"),
    "granularity": ("chunk", "row"),
    "threshold": ("global", "per_table"),
    "utility_norm": ("none", "sqrt", "mean"),
    "warm_start": ("none", "uniform", "uniform_free"),
}


@torch.no_grad()
def _row_rms(table: ChunkedEmbeddingBase) -> Tensor:
    """RMS of every row's stored values ``[num_rows]``; rows storing nothing get the whole pool's RMS."""
    counts = table.kept_mask().sum(1)
    rows = torch.repeat_interleave(torch.arange(table.num_embeddings, device=counts.device), counts)
    values = table.pool[1:].float()
    sq = values.new_zeros(table.num_embeddings).index_add_(0, rows, values.square().sum(1))
    overall = values.square().mean().sqrt() if table.num_kept else values.new_zeros(())
    return torch.where(counts > 0, (sq / (counts * table.chunk_size).clamp_min(1)).sqrt(), overall)


class FIITED(Callback):
    """Prune embedding chunks during training by utility; really shrink the tables.

    Args:
        chunk_size: columns per chunk (must divide every selected table's dimension).
        target_sparsity: fraction of chunks pruned at the end of the schedule, in ``[0, 1)``
            (0.9 when neither this nor ``target_bytes`` is given).
        target_bytes: alternatively, a budget in bytes for the selected tables' pools + indices.
        start_step, end_step: the schedule runs from ``start_step`` (no pruning before) to ``end_step``
            (target reached); pruning events go on every ``interval`` steps after it (re-admission).
        interval: optimizer steps between pruning events.
        schedule: how the sparsity grows between start and end: ``"cubic"`` (fast early, Zhu & Gupta),
            ``"linear"`` or ``"constant"`` (the target at once).
        gamma: utility decay applied at every pruning event.
        readmit: let pruned chunks come back when their utility recovers (else pruning is final).
        readmit_margin: hysteresis: a pruned chunk replaces a kept one only if its utility is higher by
            ``readmit_margin`` times the mean utility of the kept chunks (``0``: plain ranking). The bar is
            absolute, not relative to the weakest kept chunk, whose utility decays between its rare
            accesses: relative margins only delay the churn that this sampling noise causes.
        readmit_init: value of re-admitted chunks: ``"scaled"`` (normal noise with ``readmit_scale`` times
            the RMS of the row's kept values: non-zero, so it gets gradients even where its interaction
            partners read zero, yet small next to the row), ``"normal"`` (std ``readmit_std``) or ``"zeros"``.
        readmit_scale: relative std of ``"scaled"`` re-admission.
        readmit_std: std of ``"normal"`` re-admission.
        prefix: keep chunk ``c`` of a row only if chunk ``c - 1`` is kept: every row keeps its first ``k_r``
            chunks (its dimension), ``k_r`` by utility, so a uniformly smaller dimension is a special case.
            The tables then use the prefix index (:meth:`~ChunkedEmbeddingBase.use_prefix_index`: ``1 + 4 /
            index_block`` bytes per row, whatever ``K``), which makes ``chunk_size=1`` affordable.
        index_block: rows per stored base slot of the prefix index.
        min_chunks: with ``prefix``, every row accessed since the start keeps at least its first
            ``min_chunks`` chunks before any row gets more (as far as the budget allows).
        utility_norm: divide a row's utilities by its (decayed) access count: ``"none"`` (frequency times
            gradient norm), ``"sqrt"`` (by its square root) or ``"mean"`` (per-access gradient norm).
        warm_start: ``"none"`` (train dense, prune along the schedule), ``"uniform"`` or ``"uniform_free"``
            (with ``prefix``: before the first step every row keeps the same first ``k`` chunks, the largest
            ``k`` within the budget, i.e. a uniformly smaller dimension; the budget is the target from then
            on and every event gives the rest of the budget to the rows of highest utility. ``"uniform"``
            keeps ``k`` as the floor of every row accessed since the start (``min_chunks`` raised to ``k``):
            a row only grows, so the model holds the uniformly smaller one; ``"uniform_free"`` lets rows
            shrink below ``k`` too). Recommended: ``FIITED(chunk_size=1, prefix=True, warm_start="uniform",
            target_bytes=B)`` (``benchmarks/fiited.py``). Needs ``k >= 1``. A pruned column's utility is the
            gradient it would get: under a dot interaction only partners holding that column give one.
        granularity: ``"chunk"`` (FIITED) or ``"row"`` (whole rows by summed utility: the ITEP/AdaEmbed
            row-pruning baseline at the same byte budget).
        threshold: ``"global"`` (one utility threshold over all tables) or ``"per_table"`` (every table
            keeps the same fraction).
        pattern: regex (``re.search``) on module names selecting the tables; ``None`` = every
            ``nn.Embedding``/``nn.EmbeddingBag``. Tables with tied weights must be left out.
        seed: seed of the re-initialisation (the same on every rank).
        verbose: print a line per pruning event (rank zero).
    """

    def __init__(
        self,
        chunk_size: int = 4,
        target_sparsity: float | None = None,
        target_bytes: int | None = None,
        start_step: int = 0,
        end_step: int = 1000,
        interval: int = 100,
        schedule: Literal["cubic", "linear", "constant"] = "cubic",
        gamma: float = 0.98,
        readmit: bool = True,
        readmit_margin: float = 0.25,
        readmit_init: Literal["scaled", "normal", "zeros"] = "scaled",
        readmit_scale: float = 0.1,
        readmit_std: float = 0.01,
        prefix: bool = False,
        index_block: int = 16,
        min_chunks: int = 0,
        utility_norm: Literal["none", "sqrt", "mean"] = "none",
        warm_start: Literal["none", "uniform"] = "none",
        granularity: Literal["chunk", "row"] = "chunk",
        threshold: Literal["global", "per_table"] = "global",
        pattern: str | None = None,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        for arg, val, lo in (("chunk_size", chunk_size, 1), ("start_step", start_step, 0), ("interval", interval, 1),
                             ("index_block", index_block, 1), ("min_chunks", min_chunks, 0)):  # fmt: skip
            check_int(arg, val, low=lo, owner=_OWNER)
        if check_int("end_step", end_step, low=0, owner=_OWNER) < start_step:
            raise ConfigurationError(f"{_OWNER}end_step must be an integer >= start_step ({start_step}), got {end_step!r}")
        if target_sparsity is not None and target_bytes is not None:
            raise ConfigurationError(f"{_OWNER}give either target_sparsity or target_bytes, not both")
        check_int("target_bytes", target_bytes, low=1, optional=True, owner=_OWNER)
        if target_bytes is None:
            target_sparsity = 0.9 if target_sparsity is None else target_sparsity
            check_number("target_sparsity", target_sparsity, low=0.0, high=1.0, high_open=True, owner=_OWNER)
        check_number("gamma", gamma, low=0.0, high=1.0, low_open=True, owner=_OWNER)
        check_number("readmit_margin", readmit_margin, low=0.0, owner=_OWNER)
        for arg, val in (("readmit_scale", readmit_scale), ("readmit_std", readmit_std)):
            check_number(arg, val, low=0.0, low_open=True, owner=_OWNER)
        if warm_start != "none" and not (prefix and granularity == "chunk"):
            raise ConfigurationError(f"{_OWNER}warm_start={warm_start!r} needs prefix=True and granularity='chunk'")
        if min_chunks and not prefix:
            raise ConfigurationError(f"{_OWNER}min_chunks needs prefix=True (got min_chunks={min_chunks}, prefix=False)")
        for arg, val in (("schedule", schedule), ("readmit_init", readmit_init), ("granularity", granularity),
                         ("threshold", threshold), ("utility_norm", utility_norm), ("warm_start", warm_start)):  # fmt: skip
            check_choice(arg, val, _CHOICES[arg], owner=_OWNER)
        self.chunk_size = chunk_size
        self.target_sparsity = None if target_sparsity is None else float(target_sparsity)
        self.target_bytes = target_bytes
        self.start_step, self.end_step, self.interval = start_step, end_step, interval
        self.schedule = schedule
        self.gamma = float(gamma)
        self.readmit, self.readmit_margin, self.readmit_init = readmit, float(readmit_margin), readmit_init
        self.readmit_scale, self.readmit_std = float(readmit_scale), float(readmit_std)
        self.prefix, self.granularity, self.threshold = prefix, granularity, threshold
        self.index_block, self.min_chunks, self.utility_norm = index_block, min_chunks, utility_norm
        self.warm_start = warm_start
        self.floor = 0  # min_chunks raised by the warm start
        self.access: dict[str, Tensor] = {}
        self.pattern = pattern
        self.seed = seed
        self.verbose = verbose
        self.tables: dict[str, ChunkedEmbeddingBase] = {}
        self.utility: dict[str, Tensor] = {}
        self.last_event_step = -1
        self.num_events = 0
        self._pending: dict[str, Any] | None = None  # loaded or torn-down state not yet back in a fit

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(pattern=self.pattern, chunk_size=self.chunk_size)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if is_overridden("configure_model", pl_module):  # idempotent by Lightning's contract; build the tables now
            with trainer.strategy.tensor_init_context():
                pl_module.configure_model()
        self.tables = chunk_modules(pl_module, self.chunk_size, self.pattern)
        if self.prefix and self.granularity == "chunk":
            for table in self.tables.values():
                if not table.prefix_block:
                    table.use_prefix_index(self.index_block)
        if stage == "fit":
            for name, table in self.tables.items():
                table.track_grad_norms(True)
                self.utility[name] = torch.zeros_like(table.grad_norm_acc)
                self.access[name] = torch.zeros_like(table.access_acc)
            if self._uniform_chunks() < 1 and self.warm_start != "none":  # also validates the budget early
                raise ConfigurationError(
                    f"{_OWNER}warm_start={self.warm_start!r} needs a budget of at least one chunk per row; "
                    f"use a smaller chunk_size (now {self.chunk_size}) or a larger target"
                )
            if trainer.world_size > 1:
                # pools change shape: keep them out of DDP's reducer, their gradients are averaged in on_before_optimizer_step
                ignore = list(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", []))
                for name in self.tables:
                    ignore += [f"{name}.pool", f"{name}.mask", f"{name}.base"]
                pl_module._ddp_params_and_buffers_to_ignore = ignore
        if self._pending is not None:
            self._apply_pending()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            for table in self.tables.values():  # DDP does not sync what it ignores: start from rank 0's tables
                for t in (table.pool.data, table.mask, table.base):
                    torch.distributed.broadcast(t, src=0)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.warm_start != "none" and self.num_events == 0 and self.last_event_step < 0:
            self._warm_start(trainer)

    @torch.no_grad()
    def _warm_start(self, trainer: pl.Trainer) -> None:
        """Every row keeps its first ``k`` chunks, the largest ``k`` whose pool fits the target budget."""
        k = self._uniform_chunks()
        self.floor = k if self.warm_start == "uniform" else 0
        for table in self.tables.values():
            keep = torch.zeros(table.num_embeddings, table.num_chunks, dtype=torch.bool, device=table.pool.device)
            keep[:, : min(k, table.num_chunks)] = True
            if torch.equal(keep, table.kept_mask()):
                continue
            old = table.pool
            src = table.set_kept(keep)
            for optimizer in trainer.optimizers:
                remap_optimizer_state(optimizer, old, table.pool, src)

    def _uniform_chunks(self) -> int:
        """The largest ``k`` such that the first ``k`` chunks of every row fit the target pool budget (a table
        with fewer chunks keeps all of them)."""
        per_chunk = sum(t.num_embeddings * self._chunk_bytes(t) for t in self.tables.values())
        return min(max((t.num_chunks for t in self.tables.values()), default=0), self._target_pool_bytes() // max(per_chunk, 1))

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.world_size > 1:
            for table in self.tables.values():
                grad = table.pool.grad if table.pool.grad is not None else torch.zeros_like(table.pool)
                table.pool.grad = trainer.strategy.reduce(grad, reduce_op="mean").clone()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step != self.last_event_step and step > 0 and step >= self.start_step and (step - self.start_step) % self.interval == 0:
            churn = self._prune(trainer, step)
            for logger in trainer.loggers:  # one record per event whatever log_every_n_steps is (as DeviceStatsMonitor)
                logger.log_metrics({"fiited/churn": churn}, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
        kept = sum(t.num_kept for t in self.tables.values())
        total = sum(t.num_embeddings * t.num_chunks for t in self.tables.values())
        pl_module.log("fiited/kept_fraction", kept / total, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("fiited/embedding_bytes", float(self.embedding_bytes()), on_step=True, on_epoch=False, batch_size=1)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.tables:
            self._pending = self.state_dict()  # keep the accumulators for a later state_dict/fit
            for table in self.tables.values():
                table.track_grad_norms(False)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Write the tables' optimizer state in the dense layout of their ``weight`` (as the model's state dict
        holds them), so that the checkpoint resumes a plain module too; note where it went for
        :meth:`on_load_checkpoint`. State without a dense form (one value per pool slot, e.g. CounterSGD's
        counts) moves to this callback's state: a plain module restarts it, a resume with FIITED gets it back."""
        where = save_optimizer_layout(self.tables, trainer.optimizers, checkpoint.get("optimizer_states", []))
        checkpoint["callbacks"][self.state_key]["optimizer_layout"] = where

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Put the tables' optimizer state back in the pool layout saved in this callback's state (the tables
        themselves are re-pruned by :meth:`load_state_dict`, before the optimizers load)."""
        load_optimizer_layout(self.tables, checkpoint.get("callbacks", {}).get(self.state_key) or {}, checkpoint)

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            return dict(self._pending)
        return {
            "utility": {n: u.clone() for n, u in self.utility.items()},
            "grad_norm_acc": {n: t.grad_norm_acc.clone() for n, t in self.tables.items() if t.grad_norm_acc is not None},
            "access": {n: a.clone() for n, a in self.access.items()},
            "access_acc": {n: t.access_acc.clone() for n, t in self.tables.items() if t.access_acc is not None},
            "layout": {n: t.mask.clone() for n, t in self.tables.items()},
            "last_event_step": self.last_event_step,
            "num_events": self.num_events,
            "floor": self.floor,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = {k: v for k, v in state_dict.items() if k != "optimizer_layout"}  # that one is on_load_checkpoint's
        self.last_event_step = int(state_dict["last_event_step"])
        self.num_events = int(state_dict["num_events"])
        self.floor = int(state_dict.get("floor", 0))
        if self.tables:
            self._apply_pending()

    def _apply_pending(self) -> None:
        """Re-prune the tables to the pending state's layout; when training, restore the utilities too."""
        state = self._pending
        for name, table in self.tables.items():
            mask = state.get("layout", {}).get(name)
            if mask is not None and not torch.equal(mask.to(table.mask), table.mask):
                table.set_kept(table.kept_mask(mask.to(table.mask)))
        if not all(t.grad_norm_acc is not None for t in self.tables.values()):
            return  # not training: the utilities wait for the next fit
        missing = sorted(set(self.tables) - set(state["utility"]))
        if missing:
            raise ConfigurationError(f"{_OWNER}the checkpoint's state has no utilities for tables {missing}; resume with the pattern= it was trained with")
        for name, table in self.tables.items():
            self.utility[name] = state["utility"][name].to(table.pool.device).clone()
            if name in state["grad_norm_acc"]:
                table.grad_norm_acc.copy_(state["grad_norm_acc"][name])
            if name in state.get("access", {}):
                self.access[name] = state["access"][name].to(table.pool.device).clone()
                table.access_acc.copy_(state["access_acc"][name])
        self._pending = None

    # ------------------------------------------------------------------ accounting
    def embedding_bytes(self) -> int:
        """Bytes of the selected tables as stored now: pools + indices."""
        return sum(sum(t.storage_bytes().values()) for t in self.tables.values())

    def training_overhead_bytes(self) -> int:
        """Bytes FIITED adds during training: utilities and gradient-norm accumulators (the small tables' lookup
        caches, derived from the index, are :meth:`~ChunkedEmbeddingBase.cache_bytes`)."""
        accs = [a for t in self.tables.values() for a in (t.grad_norm_acc, t.access_acc) if a is not None]
        return sum(x.numel() * x.element_size() for x in [*self.utility.values(), *self.access.values(), *accs])

    def _chunk_bytes(self, table: ChunkedEmbeddingBase) -> int:
        return table.chunk_size * table.pool.element_size()

    def _target_pool_bytes(self) -> int:
        """Pool bytes (without the zero slots) allowed at the end of the schedule."""
        full = sum(t.num_embeddings * t.num_chunks * self._chunk_bytes(t) for t in self.tables.values())
        if self.target_bytes is None:
            return int(round((1 - self.target_sparsity) * full))
        fixed = sum(t.storage_bytes()["index"] + self._chunk_bytes(t) for t in self.tables.values())
        if self.target_bytes < fixed:
            raise ConfigurationError(
                f"{_OWNER}target_bytes={self.target_bytes} is below the fixed cost of the selected tables' indices and zero "
                f"slots ({fixed} bytes); give at least that much"
            )
        return min(full, self.target_bytes - fixed)

    def sparsity_at(self, step: int) -> float:
        """Scheduled fraction of the pool bytes pruned at ``step``."""
        full = sum(t.num_embeddings * t.num_chunks * self._chunk_bytes(t) for t in self.tables.values())
        final = 1 - self._target_pool_bytes() / full
        if self.warm_start != "none":
            return final
        if step < self.start_step:
            return 0.0
        p = 1.0 if self.end_step == self.start_step else min(1.0, (step - self.start_step) / (self.end_step - self.start_step))
        return final * {"cubic": 1 - (1 - p) ** 3, "linear": p, "constant": 1.0}[self.schedule]

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def _prune(self, trainer: pl.Trainer, step: int) -> float:
        """One pruning event; returns the churn: the fraction of the kept chunks that were newly admitted."""
        for name, table in self.tables.items():
            acc = table.grad_norm_acc
            if trainer.world_size > 1:
                acc = trainer.strategy.reduce(acc.clone(), reduce_op="sum")
            self.utility[name].mul_(self.gamma).add_(acc)
            table.grad_norm_acc.zero_()
            count = table.access_acc
            if trainer.world_size > 1:
                count = trainer.strategy.reduce(count.clone(), reduce_op="sum")
            self.access[name].mul_(self.gamma).add_(count)
            table.access_acc.zero_()
        full = sum(t.num_embeddings * t.num_chunks * self._chunk_bytes(t) for t in self.tables.values())
        budget = int(math.floor((1 - self.sparsity_at(step)) * full + 0.5))
        keeps = self._decide(budget)
        readmitted = 0
        for i, (name, table) in enumerate(self.tables.items()):
            fresh = keeps[name] & ~table.kept_mask()
            readmitted += int(fresh.sum())
            init = self._readmit_values(table, fresh, i) if fresh.any() else None
            old = table.pool
            src = table.set_kept(keeps[name], init)
            for optimizer in trainer.optimizers:
                remap_optimizer_state(optimizer, old, table.pool, src)
        self.last_event_step = step
        self.num_events += 1
        kept = sum(t.num_kept for t in self.tables.values())
        if self.verbose:
            total = sum(t.num_embeddings * t.num_chunks for t in self.tables.values())
            rank_zero_info(f"FIITED step {step}: kept {kept}/{total} chunks ({readmitted} re-admitted), {self.embedding_bytes()} bytes")
        return readmitted / max(kept, 1)

    def _readmit_values(self, table: ChunkedEmbeddingBase, fresh: Tensor, index: int) -> Tensor | None:
        """Values of the chunks ``fresh [rows, K]`` re-admits, in pool order (``None`` = zeros)."""
        if self.readmit_init == "zeros":
            return None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.num_events * 1009 + index)
        noise = torch.randn(int(fresh.sum()), table.chunk_size, generator=gen)
        if self.readmit_init == "normal":
            return noise * self.readmit_std
        std = _row_rms(table)[fresh.nonzero()[:, 0]].cpu() * self.readmit_scale
        return noise * std.unsqueeze(1)

    def _decide(self, budget: int) -> dict[str, Tensor]:
        """Keep masks ``[rows, K]`` per table: highest utility first (see :meth:`_greedy`) until the pool byte
        ``budget`` is spent."""
        items = []  # per table: (score [n], cost bytes per item, currently kept [n], kept first [n])
        for name, table in self.tables.items():
            score = self.utility[name].clone()
            if self.utility_norm != "none":
                count = self.access[name].clamp_min(1e-12).unsqueeze(1)
                score = score / (count.sqrt() if self.utility_norm == "sqrt" else count)
            kept = table.kept_mask()
            must = torch.zeros_like(kept)
            if self.prefix and self.granularity == "chunk":
                score = torch.cummin(score, dim=1).values
                must[:, : max(self.min_chunks, self.floor)] = (self.access[name] > 0).unsqueeze(1)
            if not self.readmit:
                score[~kept] = -math.inf
            cost = self._chunk_bytes(table)
            if self.granularity == "row":
                score, kept, must, cost = score.sum(1), kept.any(1), must.any(1), cost * table.num_chunks
            items.append((score.flatten(), cost, kept.flatten(), must.flatten()))
        if self.threshold == "global":
            chosen = self._greedy(*[[it[i] for it in items] for i in (0, 1, 2, 3)], budget)
        else:
            full = sum(s.numel() * c for s, c, _, _ in items)
            chosen = [self._greedy([s], [c], [k], [m], budget * s.numel() * c // max(full, 1))[0] for s, c, k, m in items]
        out = {}
        for (name, table), sel in zip(self.tables.items(), chosen):
            if self.granularity == "row":
                keep = sel.view(-1, 1).expand(-1, table.num_chunks).contiguous()
            else:
                keep = sel.view(table.num_embeddings, table.num_chunks)
                if self.prefix:
                    keep = torch.cumprod(keep.to(torch.uint8), dim=1).bool()
            out[name] = keep
        return out

    def _greedy(self, scores: list[Tensor], costs: list[int], kept: list[Tensor], must: list[Tensor], budget: int) -> list[Tensor]:
        """Select items by score, ``must`` ones first, kept ones raised by ``readmit_margin`` times their mean
        score (ties: kept first, then by position), until ``budget`` bytes are spent."""
        score = torch.cat([s.to(torch.float64) for s in scores])
        was_kept, first = torch.cat(kept), torch.cat(must)
        ranked = was_kept & ~first & (score > -math.inf)
        if self.readmit_margin and ranked.any():
            score = torch.where(was_kept, score + self.readmit_margin * score[ranked].mean(), score)
        score = torch.where(first & (score > -math.inf), math.inf, score)
        cost = torch.cat([torch.full((s.numel(),), c, dtype=torch.int64, device=s.device) for s, c in zip(scores, costs)])
        order = torch.argsort((~was_kept).to(torch.int8), stable=True)  # already kept first among ties
        order = order[torch.argsort(score[order], descending=True, stable=True)]
        take = torch.cumsum(cost[order], 0) <= budget
        selected = torch.zeros_like(score, dtype=torch.bool)
        selected[order[take]] = True
        selected &= score > -math.inf
        return list(torch.split(selected, [s.numel() for s in scores]))
