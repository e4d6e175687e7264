"""``RecsysModule``: a LightningModule that trains any recsys model on :class:`RecsysBatch` data.

It builds a reference model from a :class:`FeatureSpec` (``arch="dlrm"``, ``"multitask"``, ``"dhen"``,
``"dcn"`` or ``"semantic_id"``) or wraps a model you pass (any ``nn.Module`` with
``forward(batch) -> logits [B, num_tasks]``), sums per-task binary cross-entropies, and logs loss,
AUC (torchmetrics) and normalized entropy.

Example:
    >>> import lightning.pytorch as pl
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> from lightning_recsys.models import RecsysModule
    >>> dm = SyntheticCTRDataModule(num_train=1024, num_val=512, num_test=512, max_rows=100, batch_size=256)
    >>> module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8)
    >>> pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
    ...            enable_progress_bar=False, enable_model_summary=False).fit(module, dm)

Protocol for multi-task callbacks (MultiBalance): ``training_step`` stores the per-task losses of the
current batch in ``self.task_losses`` (task -> scalar tensor) and the model names its shared
representation submodule in ``shared_representation`` (``"model.shared"`` for ``MultiTaskDLRM``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import AttributeDict
from torch import Tensor, nn
from typing_extensions import override
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC

from ..data.batch import FeatureSpec, RecsysBatch
from ..embeddings.semantic_id import SemanticIdEmbedding, fit_semantic_ids
from ..metrics.ne import NormalizedEntropy
from .dcn import DCNv2
from .dhen import DHEN
from .dlrm import DLRM, MultiTaskDLRM

__all__ = ["RecsysModule"]

ARCHS = ("dlrm", "multitask", "dhen", "dcn", "semantic_id")


def _arch_kwargs(arch: str, options: Mapping[str, Any], allowed: Iterable[str], **base: Any) -> dict[str, Any]:
    """``base`` plus ``options``, which may only name ``allowed`` keys (a ``ValueError`` names the rest)."""
    allowed = sorted(set(allowed) - set(base))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"arch_options has unknown keys {unknown} for arch={arch!r}; valid: {allowed} (set "
                         f"{sorted(base)} with RecsysModule's own arguments)")  # fmt: skip
    return {**base, **options}


def _init_args(cls: type, *skip: str) -> list[str]:
    return [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", *skip)]


def _build_arch(arch: str, spec: FeatureSpec, options: Mapping[str, Any], embedding_dim: int, bottom_mlp: Sequence[int],
                top_mlp: Sequence[int]) -> nn.Module:  # fmt: skip
    """The ``"dhen"``, ``"dcn"`` or ``"semantic_id"`` (DLRM with a Semantic-ID table) model of ``spec``."""
    fixed = ("num_dense", "cardinalities", "num_tasks")
    if arch == "dhen":
        allowed = _init_args(DHEN, *fixed)
        return DHEN.from_spec(spec, **_arch_kwargs(arch, options, allowed, embedding_dim=embedding_dim,
                                                   bottom_mlp=bottom_mlp, top_mlp=top_mlp))  # fmt: skip
    if arch == "dcn":
        allowed = _init_args(DCNv2, *fixed)
        return DCNv2.from_spec(spec, **_arch_kwargs(arch, options, allowed, embedding_dim=embedding_dim, deep_mlp=top_mlp))
    kwargs = _arch_kwargs(arch, options, ["feature", *_init_args(SemanticIdEmbedding, "num_embeddings", "embedding_dim", "codes")])
    feature = kwargs.pop("feature", "item")
    if feature not in spec.cardinalities:
        raise ValueError(f"arch_options['feature'] must name a sparse feature {spec.sparse_names}, got {feature!r}")
    model = DLRM.from_spec(spec, embedding_dim=embedding_dim, bottom_mlp=bottom_mlp, top_mlp=top_mlp)
    model.embeddings.tables[feature] = SemanticIdEmbedding(spec.cardinalities[feature], embedding_dim, **kwargs)
    return model


def _default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


class RecsysModule(pl.LightningModule):
    """Train a recsys model with per-task BCE losses.

    Args:
        model: your model (``forward(batch) -> logits [B, T]``); if ``None`` one is built from
            ``feature_spec`` and the ``arch`` arguments.
        feature_spec: table sizes, dense width and task names (``datamodule.feature_spec``); a dict
            with the same fields is accepted (that is how it is stored in checkpoints).
        arch: ``"dlrm"`` (one top MLP with a logit per task), ``"multitask"`` (shared bottom and a
            tower per task), ``"dhen"`` (:class:`~lightning_recsys.models.DHEN`; ``top_mlp`` is its head),
            ``"dcn"`` (:class:`~lightning_recsys.models.DCNv2`; ``top_mlp`` is its deep MLP) or
            ``"semantic_id"`` (DLRM whose ``arch_options["feature"]`` table, default ``"item"``, is a
            :class:`~lightning_recsys.embeddings.SemanticIdEmbedding`; its codes are fitted in
            :meth:`setup` from the data module's ``content_vectors(feature)`` unless already set).
        embedding_dim, bottom_mlp, top_mlp, shared_mlp, tower_mlp: sizes of the built model.
        tasks: task names in the order of the model's logits (default: ``feature_spec.tasks``).
        task_weights: loss weight per task (default 1 each).
        optimizer: a callable ``params -> Optimizer`` (LightningCLI's ``OptimizerCallable``);
            default ``Adam(lr=1e-3)``.
        lr_scheduler: optional callable ``optimizer -> LRScheduler``.
        validate_batches: check every training batch against ``feature_spec`` (ids in range, no NaN).
        arch_options: further keyword arguments of the ``"dhen"``, ``"dcn"`` or ``"semantic_id"`` model,
            e.g. ``{"modules": ["dot", "attention"], "num_layers": 2}`` (DHEN), ``{"cross_rank": 32}``
            (DCNv2), ``{"feature": "item", "num_levels": 3, "codebook_size": 32}`` (Semantic-ID table).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        feature_spec: FeatureSpec | dict | None = None,
        arch: Literal["dlrm", "multitask", "dhen", "dcn", "semantic_id"] = "dlrm",
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (64,),
        top_mlp: Sequence[int] = (64, 32),
        shared_mlp: Sequence[int] = (64,),
        tower_mlp: Sequence[int] = (32,),
        tasks: Sequence[str] | None = None,
        task_weights: Mapping[str, float] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        validate_batches: bool = False,
        arch_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(feature_spec, Mapping):
            feature_spec = FeatureSpec(**feature_spec)
        if feature_spec is not None and not isinstance(feature_spec, FeatureSpec):
            raise TypeError(f"feature_spec must be a FeatureSpec or dict, got {type(feature_spec).__name__}")
        if arch not in ARCHS:
            raise ValueError(f"arch must be 'dlrm' or 'multitask', or one of 'dhen', 'dcn', 'semantic_id'; got {arch!r}")
        if arch_options is not None and not isinstance(arch_options, Mapping):
            raise TypeError(f"arch_options must be a mapping of keyword arguments, got {type(arch_options).__name__}")
        if arch_options and arch in ("dlrm", "multitask"):
            raise ValueError(f"arch_options apply to arch 'dhen', 'dcn' and 'semantic_id', not {arch!r}; got {sorted(arch_options)}")
        self.feature_spec = feature_spec
        if model is None:
            if feature_spec is None:
                raise ValueError("pass either model= or feature_spec= (e.g. datamodule.feature_spec)")
            if arch == "dlrm":
                model = DLRM.from_spec(
                    feature_spec, embedding_dim=embedding_dim, bottom_mlp=bottom_mlp, top_mlp=top_mlp
                )
            elif arch != "multitask":
                model = _build_arch(arch, feature_spec, dict(arch_options or {}), embedding_dim, bottom_mlp, top_mlp)
            else:
                model = MultiTaskDLRM.from_spec(
                    feature_spec,
                    embedding_dim=embedding_dim,
                    bottom_mlp=bottom_mlp,
                    shared_mlp=shared_mlp,
                    tower_mlp=tower_mlp,
                )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.tasks = list(
            tasks if tasks is not None else feature_spec.tasks if feature_spec is not None else getattr(model, "tasks", ["label"])
        )
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        # Loggers merge these hparams with the datamodule's and refuse a key both hold with different
        # values: tasks derived from feature_spec (the default) stay out of them, as LightningCLI passes
        # the config's ``tasks: null`` here; explicit names are stored as a list, like a data module's.
        given_tasks = tasks is not None
        tasks = self.tasks
        ignore = ["model", "optimizer", "lr_scheduler", "feature_spec"]
        self.save_hyperparameters(ignore=ignore if given_tasks else [*ignore, "tasks"])
        if feature_spec is not None:
            self.hparams["feature_spec"] = asdict(feature_spec)  # plain types: weights-only loadable
        weights = dict(task_weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_weights names unknown tasks {unknown}; tasks are {self.tasks}")
        self.task_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.validate_batches = validate_batches
        self.task_losses: dict[str, Tensor] = {}
        if isinstance(model, MultiTaskDLRM):
            self.shared_representation = "model.shared"
        self.val_metrics = self._make_metrics("val")
        self.test_metrics = self._make_metrics("test")

    @property
    @override
    def hparams_initial(self) -> AttributeDict:
        """The hyperparameters loggers record, with the model's task list as ``model_tasks``: the data
        module's ``tasks`` (the labels it serves) may be more, and loggers refuse a key that the module
        and the data module both hold with different values."""
        hparams = super().hparams_initial
        if "tasks" in hparams:
            hparams["model_tasks"] = hparams.pop("tasks")
        return hparams

    def _make_metrics(self, prefix: str) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                t: MetricCollection({"auc": BinaryAUROC(), "ne": NormalizedEntropy()}, prefix=f"{prefix}_", postfix=f"_{t}")
                for t in self.tasks
            }
        )

    @override
    def setup(self, stage: str) -> None:
        """Fit the codes of Semantic-ID tables that have none from the data module's ``content_vectors``."""
        datamodule = getattr(self._trainer, "datamodule", None)
        fit_semantic_ids(self.model, getattr(datamodule, "content_vectors", None))

    @override
    def forward(self, batch: RecsysBatch) -> Tensor:
        """Logits ``[B, num_tasks]``."""
        return self.model(batch)

    def _task_losses(self, logits: Tensor, batch: RecsysBatch) -> dict[str, Tensor]:
        if logits.dim() != 2 or logits.shape[1] != len(self.tasks):
            raise ValueError(
                f"model returned logits of shape {tuple(logits.shape)}; expected [batch, {len(self.tasks)}] "
                f"for tasks {self.tasks}"
            )
        missing = [t for t in self.tasks if t not in batch.labels]
        if missing:
            raise ValueError(f"batch has no labels for tasks {missing}; it has {sorted(batch.labels)}")
        return {
            t: F.binary_cross_entropy_with_logits(logits[:, i], batch.labels[t]) for i, t in enumerate(self.tasks)
        }

    @override
    def training_step(self, batch: RecsysBatch, batch_idx: int) -> Tensor:
        if self.validate_batches:
            batch.validate(self.feature_spec)
        losses = self._task_losses(self(batch), batch)
        self.task_losses = losses
        loss = sum(self.task_weights[t] * losses[t] for t in self.tasks)
        bs = batch.batch_size
        self.log("train_loss", loss, prog_bar=True, batch_size=bs)
        # self.log costs ~0.1-1 ms per call: per-task losses only at the logger's cadence
        if len(self.tasks) > 1 and self._trainer is not None and (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            for t, value in losses.items():
                self.log(f"train_loss_{t}", value, batch_size=bs)
        return loss

    def _eval_step(self, batch: RecsysBatch, stage: str) -> Tensor:
        logits = self(batch)
        losses = self._task_losses(logits, batch)
        loss = sum(self.task_weights[t] * losses[t] for t in self.tasks)
        bs = batch.batch_size
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        for i, t in enumerate(self.tasks):
            metrics[t].update(logits[:, i], batch.labels[t].long())
        self.log(f"{stage}_loss", loss, prog_bar=stage == "val", batch_size=bs, sync_dist=True)
        return loss

    def _log_metrics(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        main = self.tasks[0]
        # compute() already syncs the metric states across ranks, so every rank holds the same value;
        # sync_dist only averages identical scalars (and keeps Lightning from warning under DDP)
        for t in self.tasks:
            values = metrics[t].compute()
            metrics[t].reset()
            for name, value in values.items():
                self.log(name, value, prog_bar=(t == main and name.startswith(f"{stage}_auc")), sync_dist=True)
            if t == main:
                self.log(f"{stage}_auc", values[f"{stage}_auc_{t}"], sync_dist=True)
                self.log(f"{stage}_ne", values[f"{stage}_ne_{t}"], sync_dist=True)

    @override
    def validation_step(self, batch: RecsysBatch, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    @override
    def test_step(self, batch: RecsysBatch, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    @override
    def predict_step(self, batch: RecsysBatch, batch_idx: int) -> Tensor:
        """Probabilities ``[B, num_tasks]``."""
        return torch.sigmoid(self(batch))

    @override
    def configure_optimizers(self) -> Any:
        # a plain list of self.parameters() that also carries the module: every torch optimizer takes
        # it as is, and those that route by module type (lightning_recsys.optim.Muon, MLorcAdamW,
        # CounterSGD) find the embedding tables through it, also when built from a YAML config
        from ..optim import module_parameters

        optimizer = self.optimizer_factory(module_parameters(self))
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
