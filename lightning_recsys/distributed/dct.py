"""``DCTStrategy``: DDP with Dynamic Communication Thresholding (Gupta et al., KDD 2021).

Data parallel: gradients go through :func:`~lightning_recsys.distributed.dp_hook.dct_comm_hook`
(hard threshold + error feedback), registered on every device type (Lightning's ``DDPStrategy`` only
registers comm hooks on CUDA). Model parallel (``mp_compression=True``): the model's embedding
collection is sharded table-wise across ranks and the pooled embeddings cross a compressed all-to-all
(default: 4-bit values forward, 1-bit scaled signs backward, ~10x fewer bytes; per-sample top-k or
thresholded values + positions are the alternatives, see :mod:`~lightning_recsys.distributed.codecs`).

The hook state (step, residuals, thresholds of every rank) is stored in the checkpoint under
``"dct_comm_state"``, the boundary codecs' state (step, thresholds) under ``"dct_mp_codec_state"``, so a
run resumed with ``ckpt_path=`` continues exactly.

Example:
    >>> import lightning.pytorch as pl
    >>> import lightning_recsys  # registers "dct" and "dct_spawn"
    >>> trainer = pl.Trainer(strategy="dct", accelerator="cpu", devices=2)  # doctest: +SKIP
    >>> from lightning_recsys.distributed import DCTStrategy
    >>> trainer = pl.Trainer(strategy=DCTStrategy(density=0.005, refresh_interval=500))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from .._compat import PathLike, StrategyRegistryType, ddp_ignore_parameters
from .._validation import ConfigurationError, check_int, check_number
from .codecs import check_codec_options
from .dp_hook import DCTCommState, dct_comm_hook
from .sharded import ShardedEmbeddingBagCollection, ignore_sharded_parameters, shard_embeddings, unshard_embeddings

__all__ = ["DCTStrategy"]

_OWNER = "DCTStrategy: "
CHECKPOINT_KEY = "dct_comm_state"
MP_CHECKPOINT_KEY = "dct_mp_codec_state"
_REJECTED = ("ddp_comm_hook", "ddp_comm_state", "ddp_comm_wrapper", "model_averaging_period")


class DCTStrategy(DDPStrategy):
    """DDP that thresholds data-parallel gradients and, optionally, the model-parallel embedding boundary.

    Args:
        density: target fraction of gradient entries sent per step (the threshold's quantile), in (0, 1].
        refresh_interval: ``L``, steps between threshold refreshes (sampled quantile; in between only a
            comparison).
        error_feedback: keep what was not sent and add it to the next step's gradient.
        start_step: first optimizer step that is compressed (>= 2: DDP rebuilds its buckets at step 1);
            earlier steps use a plain all-reduce.
        min_compress_numel: parameters with fewer entries (biases) are sent exactly.
        sample_size: entries sampled to estimate each threshold.
        capacity_factor: pair slots per compressed parameter, as a multiple of ``density * numel``; every
            rank sends one fixed-size packed buffer per bucket (no count exchange). Entries over the
            threshold beyond the capacity (the largest go first) stay in the residual.
        mp_compression: shard the model's :class:`~lightning_recsys.embeddings.EmbeddingBagCollection`
            table-wise across ranks (or use the model's
            :class:`~lightning_recsys.distributed.sharded.ShardedEmbeddingBagCollection`) and compress the
            pooled-embedding all-to-all.
        mp_codec: boundary codec: ``"quant"`` (default: every entry, ``mp_bits`` forward, ``mp_grad_bits``
            backward, Gaussian levels, factored scales: ~10x fewer bytes), ``"topk"`` (per-sample top-k values + positions,
            gradients at the same positions), ``"threshold"`` (entries over a per-table threshold refreshed
            every ``mp_refresh_interval`` steps), or the anchors ``"fp32"`` (uncompressed), ``"fp16"``,
            ``"int8"``. The ``mp_*`` options are validated by the codec
            (:func:`~lightning_recsys.distributed.codecs.check_codec_options`).
        mp_keep_ratio: ``"topk"``: fraction of each sample's boundary entries kept; ``"threshold"``: the
            fraction its thresholds target; in (0, 1].
        mp_per_table: select (and scale) within every table's pooled vector (``"topk"``: each table keeps
            ``ceil(mp_keep_ratio * embedding_dim)`` entries) rather than over the sample's whole row.
        mp_bits: bits per value sent forward by ``"quant"`` (default 4), ``"topk"``/``"threshold"``
            (default 32): one of 32, 16, 8, 4, 3, 2, 1.
        mp_grad_bits: bits per gradient sent backward (default: 2 for ``"quant"``, ``mp_bits`` otherwise;
            1 is a scale times the sign).
        mp_grad_rounding: ``"nearest"`` (default) or ``"stochastic"`` (unbiased, but noisier) rounding of
            quantized gradients.
        mp_levels: quantization levels of 2-4 bit values: ``"gaussian"`` (``"quant"``'s default: Lloyd-Max
            levels of a Gaussian times an RMS scale) or ``"uniform"`` (under an absmax; the sparse codecs'
            default).
        mp_scales: ``"quant"``'s int8 scale codes: ``"factored"`` (default: one per table of each
            all-to-all block times one per sample) or ``"group"`` (one per table vector of each sample,
            +0.5 bit per entry at 16-wide tables; with it the former default ``mp_grad_bits=1,
            mp_levels="uniform"`` is 10.1x but lost up to 0.005 AUC in benchmarks/dct.py's seed sweep).
        mp_start_step: training steps before this one send the boundary uncompressed (warm-up).
        mp_refresh_interval: ``"threshold"``: steps between threshold refreshes.
        log_stats: log ``dct_density``, ``dct_bytes_sent`` and ``dct_compression_ratio`` (previous step's
            figures, this rank) through the LightningModule's ``log``; with sharded tables also
            ``dct_mp_compression_ratio`` (boundary fp32 bytes / bytes sent, this rank, since the run began).
        seed: seed of the threshold sampling (deterministic across resumes).
        **kwargs: everything :class:`~lightning.pytorch.strategies.DDPStrategy` takes (``start_method``,
            ``process_group_backend``, ``find_unused_parameters``, ``cluster_environment``, ...) except the
            comm-hook arguments, which this strategy sets itself.
    """

    strategy_name = "dct"

    def __init__(
        self,
        density: float = 0.01,
        refresh_interval: int = 100,
        error_feedback: bool = True,
        start_step: int = 2,
        min_compress_numel: int = 1024,
        sample_size: int = 8192,
        capacity_factor: float = 1.0,
        mp_compression: bool = False,
        mp_keep_ratio: float = 0.05,
        mp_per_table: bool = True,
        mp_codec: Literal["quant", "topk", "threshold", "fp32", "fp16", "int8"] = "quant",
        mp_bits: int | None = None,
        mp_grad_bits: int | None = None,
        mp_grad_rounding: Literal["nearest", "stochastic"] = "nearest",
        mp_levels: Literal["uniform", "gaussian"] | None = None,
        mp_scales: Literal["factored", "group"] | None = None,
        mp_start_step: int = 0,
        mp_refresh_interval: int = 100,
        log_stats: bool = True,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        bad = [k for k in _REJECTED if kwargs.get(k) is not None]
        if bad:
            raise ConfigurationError(f"{_OWNER}sets the DDP comm hook itself; do not pass {bad} (use DDPStrategy for that)")
        check_number("density", density, low=0.0, high=1.0, low_open=True, owner=_OWNER)
        for name, value, low in (("refresh_interval", refresh_interval, 1), ("start_step", start_step, 2),
                                 ("min_compress_numel", min_compress_numel, 0), ("sample_size", sample_size, 1),
                                 ("seed", seed, 0)):  # fmt: skip
            check_int(name, value, low=low, owner=_OWNER)
        check_number("capacity_factor", capacity_factor, low=1.0, owner=_OWNER)
        codec_options = {"bits": mp_bits, "grad_bits": mp_grad_bits, "grad_rounding": mp_grad_rounding,
                         "levels": mp_levels, "scales": mp_scales, "start_step": mp_start_step,
                         "refresh_interval": mp_refresh_interval, "seed": seed}  # fmt: skip
        check_codec_options(mp_codec, mp_keep_ratio, **codec_options, prefix="mp_", owner=_OWNER)
        for name, flag in (("error_feedback", error_feedback), ("mp_compression", mp_compression), ("mp_per_table", mp_per_table), ("log_stats", log_stats)):
            if not isinstance(flag, bool):
                raise TypeError(f"DCTStrategy: {name} must be True or False, got {flag!r}")
        super().__init__(**kwargs)
        self.density = float(density)
        self.refresh_interval = refresh_interval
        self.error_feedback = error_feedback
        self.start_step = start_step
        self.min_compress_numel = min_compress_numel
        self.sample_size = sample_size
        self.capacity_factor = float(capacity_factor)
        self.mp_compression = mp_compression
        self.mp_keep_ratio = float(mp_keep_ratio)
        self.mp_per_table = mp_per_table
        self.mp_codec = mp_codec
        self.mp_codec_options = codec_options
        self.log_stats = log_stats
        self.seed = seed
        self.comm_state: DCTCommState | None = None
        self._sharded_this_run = False
        self._pending_comm_state: list[dict[str, Any]] | None = None
        self._pending_mp_state: list[dict[str, Any]] | None = None
        self._mp_collections: list[tuple[str, ShardedEmbeddingBagCollection]] = []

    # ----------------------------------------------------------------- registration
    @classmethod
    @override
    def register_strategies(cls, strategy_registry: StrategyRegistryType) -> None:
        """Register ``"dct"`` (subprocess launch) and ``"dct_spawn"``; a second call is a no-op."""
        for name, start_method in (("dct", "popen"), ("dct_spawn", "spawn")):
            if name in strategy_registry:
                continue
            strategy_registry.register(
                name,
                cls,
                description=f"DCT-compressed DDP (lightning_recsys) with start_method '{start_method}'",
                start_method=start_method,
            )

    # ----------------------------------------------------------------- setup
    @override
    def setup(self, trainer: pl.Trainer) -> None:
        self._sharded_this_run = False
        if self.mp_compression and trainer.state.fn == "fit":
            self._shard_embeddings()
        self._mp_collections = self._sharded_collections()  # kept: fit swaps full tables back at its end
        if self._pending_mp_state is not None:
            for prefix, sub in self._mp_collections:
                sub.codec.load_state_dict(self._pending_mp_state[self.global_rank][prefix])
            self._pending_mp_state = None
        super().setup(trainer)

    @override
    def on_train_end(self) -> None:
        """Swap full tables back into the model (collective), so that after ``fit`` it is a normal model."""
        super().on_train_end()
        if self._sharded_this_run:
            unshard_embeddings(self.lightning_module)
            ddp_ignore_parameters(self.lightning_module, [])

    def _shard_embeddings(self) -> None:
        module = self.lightning_module
        collections = shard_embeddings(module, codec=self.mp_codec, keep_ratio=self.mp_keep_ratio, per_table=self.mp_per_table,
                                       **self.mp_codec_options)  # fmt: skip
        if not collections:
            raise ConfigurationError(
                "DCTStrategy(mp_compression=True) needs an embedding collection to shard, but "
                f"{type(module).__name__} contains no lightning_recsys EmbeddingBagCollection or "
                "ShardedEmbeddingBagCollection. Use one in your model, or set mp_compression=False."
            )
        ignore_sharded_parameters(module)
        self._sharded_this_run = True
        rank_zero_info(
            f"DCTStrategy: sharded {len(collections)} embedding collection(s) table-wise, boundary {collections[0].codec!r}"
        )

    @override
    def configure_ddp(self) -> None:
        """Wrap the model in DDP (as ``DDPStrategy``) and register the DCT comm hook: on every device type,
        where Lightning's ``DDPStrategy`` registers comm hooks only on CUDA."""
        super().configure_ddp()
        self._register_comm_hook()

    def _register_comm_hook(self) -> None:
        if not isinstance(self.model, DistributedDataParallel):
            raise RuntimeError("DCTStrategy: the model must be wrapped in DistributedDataParallel before hooks are registered")
        self.comm_state = DCTCommState(
            density=self.density,
            refresh_interval=self.refresh_interval,
            error_feedback=self.error_feedback,
            start_step=self.start_step,
            min_compress_numel=self.min_compress_numel,
            sample_size=self.sample_size,
            capacity_factor=self.capacity_factor,
            seed=self.seed,
        ).bind(self.model)
        if self._pending_comm_state is not None:
            self.comm_state.load_state_dict(self._pending_comm_state[self.global_rank], device=self.root_device)
            self._pending_comm_state = None
        self.model.register_comm_hook(self.comm_state, dct_comm_hook)

    # ----------------------------------------------------------------- logging
    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        out = super().training_step(*args, **kwargs)
        module = self.lightning_module
        if self.log_stats and self.comm_state is not None and self.comm_state.last_stats and module is not None:
            stats = self.comm_state.last_stats
            for key in ("density", "bytes_sent", "compression_ratio"):
                module.log(f"dct_{key}", stats[key], on_step=True, on_epoch=False, batch_size=1)
        mp = self.mp_stats
        if self.log_stats and module is not None and mp["forward_bytes"]:
            ratio = (mp["dense_forward_bytes"] + mp["dense_backward_bytes"]) / (mp["forward_bytes"] + mp["backward_bytes"])
            module.log("dct_mp_compression_ratio", float(ratio), on_step=True, on_epoch=False, batch_size=1)
        return out

    @property
    def mp_stats(self) -> dict[str, int]:
        """This rank's boundary byte counters (``forward_bytes``, ``backward_bytes`` and their fp32
        equivalents ``dense_*``), summed over the sharded collections of the last run."""
        keys = ("forward_bytes", "backward_bytes", "dense_forward_bytes", "dense_backward_bytes")
        return {k: sum(sub.stats[k] for _, sub in self._mp_collections) for k in keys}

    # ----------------------------------------------------------------- checkpointing
    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Model state with sharded embedding tables gathered from all ranks (full, unsharded keys)."""
        state = super().lightning_module_state_dict()
        for prefix, sub in self._sharded_collections():
            for key, value in sub.gather_full_state().items():
                state[f"{prefix}.{key}" if prefix else key] = value
        return state

    @override
    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """With sharded tables each rank's optimizer differs: store all ranks' states."""
        state = super().optimizer_state(optimizer)
        if not (self._sharded_this_run or self._has_sharded_tables()):
            return state
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        return {"dct_per_rank": gathered}

    @override
    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        states = checkpoint["optimizer_states"]
        if states and isinstance(states[0], Mapping) and "dct_per_rank" in states[0]:
            rank = self.global_rank
            checkpoint = {**checkpoint, "optimizer_states": [s["dct_per_rank"][rank] for s in states]}
        super().load_optimizer_state_dict(checkpoint)

    def _sharded_collections(self) -> list[tuple[str, ShardedEmbeddingBagCollection]]:
        module = self.lightning_module
        if module is None:
            return []
        return [(p, m) for p, m in module.named_modules() if isinstance(m, ShardedEmbeddingBagCollection)]

    def _has_sharded_tables(self) -> bool:
        return bool(self._sharded_collections())

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: PathLike, storage_options: Any | None = None) -> None:
        """Add every rank's comm-hook state (collective: all ranks call it, as ``Trainer.save_checkpoint`` does)."""
        if self.comm_state is not None and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, self.comm_state.state_dict())
            checkpoint[CHECKPOINT_KEY] = {"world_size": len(states), "ranks": states}
        collections = self._mp_collections
        if collections and dist.is_available() and dist.is_initialized():
            codecs: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(codecs, {prefix: sub.codec.state_dict() for prefix, sub in collections})
            checkpoint[MP_CHECKPOINT_KEY] = {"world_size": len(codecs), "ranks": codecs}
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def _check_saved_world_size(self, saved: dict[str, Any], what: str) -> None:
        if saved["world_size"] != self.world_size:
            raise ConfigurationError(
                f"{_OWNER}the checkpoint's {what} was saved with {saved['world_size']} processes, "
                f"this run has {self.world_size}; resume with the same number of processes"
            )

    @override
    def load_checkpoint(self, checkpoint_path: PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is not None:
            self._check_saved_world_size(saved, "comm-hook state")
            if self.comm_state is not None:
                self.comm_state.load_state_dict(saved["ranks"][self.global_rank], device=self.root_device)
            else:
                self._pending_comm_state = saved["ranks"]
        saved_mp = checkpoint.get(MP_CHECKPOINT_KEY)
        if saved_mp is not None:
            self._check_saved_world_size(saved_mp, "boundary codec state")
            self._pending_mp_state = saved_mp["ranks"]  # applied in setup(), once the tables are sharded
        return checkpoint
