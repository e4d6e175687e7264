"""MultiBalance: balance per-task gradient magnitudes on the shared representation (arXiv 2411.11871).

Multi-task rankers share a bottom (embeddings, interaction, MLP) whose output ``Z`` feeds one tower per
task. A task with a large loss scale dominates the shared bottom's gradient. ``MultiBalance`` rescales
each task's gradient with respect to ``Z`` to the magnitude of an anchor (MetaBalance's rule,
arXiv 2203.06801) and still runs only ONE backward pass through the shared bottom:

* a forward hook hands the towers ``Zb``, an identity on ``Z`` whose backward ignores the gradient
  arriving from the towers and returns the balanced one set by the callback;
* per task, ``g_i = autograd.grad(L_i, Zb)`` goes through the towers only (cheap);
* ``n_i = beta * n_i + (1 - beta) * ||g_i||`` (squared norms all-reduced over ranks);
* Lightning's own backward of the loss ``training_step`` returns then trains the towers and, at
  ``Zb``, sends ``sum_i w_i * g_i * (r * a / (n_i + eps) + 1 - r)`` into the shared bottom (anchor
  ``a`` = the target task's norm, the largest or the mean norm): one backward pass for the whole
  model, so DDP's reducer sees every gradient exactly as without the callback.

``level="parameter"`` applies the same rule per shared *parameter* instead (MetaBalance proper): one
backward through the shared bottom per task, which is what makes it expensive.

Protocol (two lines in your LightningModule)::

    self.shared_representation = "encoder"        # in __init__: the submodule whose output the heads use
    self.task_losses = {"click": l1, "buy": l2}   # in training_step, before returning l1 + l2

``RecsysModule(arch="multitask")`` follows it already. Example:

    >>> import lightning.pytorch as pl
    >>> from lightning_recsys.callbacks.multibalance import MultiBalance
    >>> trainer = pl.Trainer(callbacks=[MultiBalance(relax_factor=0.7, anchor="target")])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from .._validation import ConfigurationError, check_choice, check_number

__all__ = ["MultiBalance"]

_OWNER = "MultiBalance: "
_ANCHORS = ("target", "max", "mean")
_LEVELS = ("representation", "parameter")


def _norm(g: Tensor) -> Tensor:
    """L2 norm in float32 (sparse gradients: of their coalesced values)."""
    if g.is_sparse:
        g = g.coalesce().values()
    return torch.linalg.vector_norm(g, dtype=torch.float32)


def _sq_norms(grads: list[list[Tensor]]) -> Tensor:
    """``[len(grads)]`` squared norms, each over one task's list of tensors."""
    n = torch.stack([_norm(x) for g in grads for x in g]).square()
    return n if len(grads[0]) == 1 else n.view(len(grads), -1).sum(1)


class _Slot:
    """The balanced gradient for one captured representation, filled in before the backward pass."""

    __slots__ = ("grad", "used")

    def __init__(self) -> None:
        self.grad: Tensor | None = None
        self.used = False


class _Balanced(torch.autograd.Function):
    """Identity on ``Z`` whose backward returns ``slot.grad`` (the balanced gradient) instead of the
    towers' gradient; with no balanced gradient set it passes the towers' gradient through."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, slot: _Slot) -> Tensor:
        ctx.slot = slot
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        slot = ctx.slot
        slot.used = True
        return (grad if slot.grad is None else slot.grad), None


class MultiBalance(Callback):
    """Balance per-task gradients on the shared representation with one backward through the bottom.

    Args:
        relax_factor: ``r`` in ``[0, 1]``; 0 leaves the plain sum of task gradients, 1 gives every task
            the anchor's gradient magnitude.
        beta: moving-average factor of the gradient norms, in ``[0, 1)``.
        anchor: the magnitude every task is pulled to: ``"target"`` (the target task's), ``"max"`` or
            ``"mean"`` over tasks.
        target_task: the task whose magnitude is the anchor (default: the first task in
            ``task_losses``).
        task_weights: weight per task name on the balanced gradients (default 1 each). The towers are
            trained by the loss ``training_step`` returns, so weight tasks there for the towers.
        eps: added to the norms before dividing.
        level: ``"representation"`` (MultiBalance, one backward through the shared bottom) or
            ``"parameter"`` (MetaBalance: per shared parameter, one backward per task).
        representation: dotted name of the shared submodule (``"model.shared"``); default: the
            module's ``shared_representation`` attribute.

    Example:
        >>> from lightning_recsys.callbacks.multibalance import MultiBalance
        >>> cb = MultiBalance(relax_factor=0.7, beta=0.9, anchor="target", target_task="click")
    """

    def __init__(
        self,
        relax_factor: float = 0.7,
        beta: float = 0.9,
        anchor: Literal["target", "max", "mean"] = "target",
        target_task: str | None = None,
        task_weights: Mapping[str, float] | None = None,
        eps: float = 1e-8,
        level: Literal["representation", "parameter"] = "representation",
        representation: str | None = None,
    ) -> None:
        check_number("relax_factor", relax_factor, low=0.0, high=1.0, owner=_OWNER)
        check_number("beta", beta, low=0.0, high=1.0, high_open=True, owner=_OWNER)
        check_choice("anchor", anchor, _ANCHORS, owner=_OWNER)
        check_choice("level", level, _LEVELS, owner=_OWNER)
        check_number("eps", eps, low=0.0, low_open=True, owner=_OWNER)
        if target_task is not None and not isinstance(target_task, str):
            raise TypeError(f"{_OWNER}target_task must be a task name (str) or None, got {target_task!r}")
        if representation is not None and (not isinstance(representation, str) or not representation):
            raise TypeError(f"{_OWNER}representation must be a dotted submodule name such as 'model.shared', got {representation!r}")
        weights = dict(task_weights or {})
        for t, w in weights.items():
            check_number(f"task_weights[{t!r}]", w, low=0.0, owner=_OWNER)
        self.relax_factor = float(relax_factor)
        self.beta = float(beta)
        self.anchor = anchor
        self.target_task = target_task
        self.task_weights = {str(t): float(w) for t, w in weights.items()}
        self.eps = float(eps)
        self.level = level
        self.representation = representation
        # state (checkpointed): task order, moving-average norms [T] or [T, P], number of updates
        self.tasks: list[str] | None = None
        self.norms: Tensor | None = None
        self.steps = 0
        self._last_weights: Tensor | None = None
        self._weights: Tensor | None = None  # task_weights as a tensor in task order
        self._module: nn.Module | None = None
        self._path = ""
        self._handle: Any = None
        self._capturing = False
        # per forward of the representation in this batch: (Z, what the towers got, balanced-gradient slot)
        self._captured: list[tuple[Tensor, Tensor, _Slot | None]] = []
        self._pending: list[tuple[Tensor, _Slot]] = []  # slots filled, waiting for the backward pass
        self._validated: list[str] | None = None  # task list already checked against the options
        self._state_key = self._generate_state_key(level=self.level, representation=self.representation)

    @property
    def last_weights(self) -> dict[str, float]:
        """Effective weight per task of the last batch: ``w_i * scale_i`` (mean over parameters at level="parameter")."""
        if self._last_weights is None or self.tasks is None:
            return {}
        return {t: float(v) for t, v in zip(self.tasks, self._last_weights)}

    @property
    @override
    def state_key(self) -> str:
        return self._state_key  # cached: Lightning reads it on every hook call

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._attach(pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._captured.clear()
        self._pending.clear()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        if isinstance(wrapped, nn.parallel.DistributedDataParallel) and wrapped.find_unused_parameters:
            raise ConfigurationError(
                "MultiBalance does not support DDP's find_unused_parameters=True (at level='parameter' it detaches the "
                "shared representation, so DDP would mark the shared parameters unused and then fail when they get "
                "their gradients). Use strategy='ddp' (find_unused_parameters=False, the default)."
            )

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._captured.clear()
        self._pending.clear()
        self._capturing = True

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._captured.clear()
        self._pending.clear()
        self._capturing = False

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self._balance(trainer, pl_module)

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a loss that does not reach the representation still trains the shared bottom with the balanced gradient
        missed = [(z, slot.grad) for z, slot in self._pending if not slot.used]
        self._pending.clear()
        if missed:
            torch.autograd.backward([z for z, _ in missed], [g for _, g in missed])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": None if self.tasks is None else list(self.tasks),
            "norms": None if self.norms is None else self.norms.detach().cpu().clone(),
            "steps": self.steps,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks = None if state_dict["tasks"] is None else list(state_dict["tasks"])
        self.norms = state_dict["norms"]
        self.steps = int(state_dict["steps"])

    # ------------------------------------------------------------------ workers
    def _attach(self, pl_module: pl.LightningModule) -> None:
        path = self.representation or getattr(pl_module, "shared_representation", None)
        if path is None:
            raise ConfigurationError(
                f"MultiBalance needs the shared representation of {type(pl_module).__name__}: set "
                "`self.shared_representation = '<submodule name>'` in its __init__ (the submodule whose output "
                "the task heads consume, e.g. 'model.shared') or pass MultiBalance(representation=...)."
            )
        if not isinstance(path, str):
            raise TypeError(f"{_OWNER}shared_representation must be a dotted submodule name (str), got {path!r}")
        try:
            module = pl_module.get_submodule(path)
        except AttributeError:
            names = [n for n, _ in pl_module.named_modules() if n][:20]
            raise ConfigurationError(
                f"MultiBalance: {type(pl_module).__name__} has no submodule {path!r} (shared representation); "
                f"submodules include {names}"
            ) from None
        if self._handle is not None:
            self._handle.remove()
        self._module, self._path = module, path
        self._handle = module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: Any, output: Any) -> Tensor | None:
        if not (self._capturing and module.training and torch.is_grad_enabled()):
            return None
        if not isinstance(output, Tensor):
            raise TypeError(
                f"MultiBalance: the shared representation {self._path!r} must return one Tensor, "
                f"got {type(output).__name__}"
            )
        if not output.requires_grad:
            return None
        if self.level == "parameter":  # the shared parameters' gradients are set by the callback itself
            detached = output.detach().requires_grad_()
            self._captured.append((output, detached, None))
            return detached
        slot = _Slot()
        balanced = _Balanced.apply(output, slot)
        self._captured.append((output, balanced, slot))
        return balanced

    def _task_losses(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        losses = getattr(pl_module, "task_losses", None)
        if not isinstance(losses, Mapping) or not losses:
            raise ConfigurationError(
                f"MultiBalance needs the per-task losses of this batch: set `self.task_losses = {{'task': loss, ...}}` "
                f"in {type(pl_module).__name__}.training_step (got {type(losses).__name__}: {losses!r:.80})."
            )
        for t, value in losses.items():
            if not isinstance(value, Tensor) or value.numel() != 1 or not value.requires_grad:
                raise ConfigurationError(
                    f"MultiBalance: task_losses[{t!r}] must be a scalar tensor that requires grad, got {value!r:.80}"
                )
        tasks = [str(t) for t in losses]
        if tasks != self._validated:
            if self.tasks is not None and tasks != self.tasks:
                raise ConfigurationError(
                    f"MultiBalance: task_losses names tasks {tasks}, but balancing started with {self.tasks}"
                )
            self._start(tasks)
            self._validated = tasks
        return dict(zip(tasks, losses.values()))

    def _start(self, tasks: list[str]) -> None:
        unknown = sorted(set(self.task_weights) - set(tasks))
        if unknown:
            raise ConfigurationError(f"{_OWNER}task_weights names unknown tasks {unknown}; task_losses has {tasks}")
        if self.target_task is not None and self.target_task not in tasks:
            raise ConfigurationError(f"{_OWNER}target_task {self.target_task!r} is not in task_losses; tasks are {tasks}")
        if tasks != self.tasks:
            self.tasks, self._weights = tasks, None

    def _balance(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._captured:
            raise ConfigurationError(
                f"MultiBalance: the shared representation {self._path!r} did not run with gradients in "
                f"{type(pl_module).__name__}.training_step, so there is nothing to balance."
            )
        losses = self._task_losses(pl_module)
        captured, self._captured = self._captured, []
        inputs = [zb for _, zb, _ in captured]
        grads = []
        for t, loss in losses.items():  # through the towers only: they stop at the representation
            try:
                g = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
            except RuntimeError as err:
                raise RuntimeError(
                    f"MultiBalance: cannot differentiate task_losses[{t!r}]; set task_losses anew in every "
                    f"training_step ({err})"
                ) from err
            if all(x is None for x in g):
                raise ConfigurationError(
                    f"MultiBalance: task_losses[{t!r}] does not depend on this batch's output of {self._path!r}"
                )
            grads.append([torch.zeros_like(zb) if x is None else x for x, zb in zip(g, inputs)])
        # Lightning divides the returned loss by accumulate_grad_batches (and AMP scales it): match it
        factor = 1.0 / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            factor *= float(scaler.get_scale())
        device = inputs[0].device
        w = self._weights
        if w is None or w.device != device:
            w = self._weights = torch.tensor([self.task_weights.get(t, 1.0) for t in self.tasks], device=device)
        if self.level == "representation":
            weights = self._update(trainer, _sq_norms(grads)) * w  # [T]
            s = (weights if factor == 1.0 else weights * factor).unbind()
            for k, (z, _, slot) in enumerate(captured):  # handed to the bottom by Lightning's backward
                out = grads[0][k] * s[0]
                for i in range(1, len(grads)):
                    out.addcmul_(grads[i][k], s[i])
                slot.grad = out
                self._pending.append((z, slot))
        else:
            zs = [z for z, _, _ in captured]
            params = [p for p in self._module.parameters() if p.requires_grad]
            per_task = []
            for i, g in enumerate(grads):  # one backward through the shared bottom per task
                gp = torch.autograd.grad(zs, params, grad_outputs=g, retain_graph=i < len(grads) - 1, allow_unused=True)
                per_task.append(gp)
            used = [j for j in range(len(params)) if any(gp[j] is not None for gp in per_task)]
            params = [params[j] for j in used]
            per_task = [[gp[j] if gp[j] is not None else torch.zeros_like(params[n]) for n, j in enumerate(used)] for gp in per_task]
            sq = torch.stack([torch.stack([_norm(x) for x in gp]) for gp in per_task]).square()  # [T, P]
            scale = self._update(trainer, sq) * w[:, None]  # [T, P]
            out = [factor * sum(scale[i, j] * per_task[i][j] for i in range(len(per_task))) for j in range(len(params))]
            torch.autograd.backward(params, out)
            weights = scale.mean(dim=1)
        self._last_weights = weights.detach()
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:  # logging costs ~0.1 ms a value
            norms = self.norms if self.norms.dim() == 1 else self.norms.pow(2).sum(1).sqrt()
            logs = {f"multibalance/grad_norm_{t}": norms[i] for i, t in enumerate(self.tasks)}
            logs.update({f"multibalance/weight_{t}": weights[i] for i, t in enumerate(self.tasks)})
            pl_module.log_dict({k: v.detach().float() for k, v in logs.items()}, on_step=True, on_epoch=False)

    def _update(self, trainer: pl.Trainer, sq: Tensor) -> Tensor:
        """All-reduce squared norms, update the moving averages, return the per-task scales."""
        sq = sq.detach()
        if trainer.world_size > 1:
            sq = trainer.strategy.reduce(sq, reduce_op="mean")
        batch_norm = sq.sqrt()
        norms = self.norms
        if norms is None:
            norms = torch.zeros_like(batch_norm)
        elif norms.shape != batch_norm.shape:
            raise ConfigurationError(
                f"MultiBalance: checkpointed norms have shape {tuple(norms.shape)}, this run needs "
                f"{tuple(batch_norm.shape)} (different tasks, level or shared parameters)"
            )
        elif norms.device != batch_norm.device or norms.dtype != batch_norm.dtype:
            norms = norms.to(batch_norm)
        self.norms = norms = norms.mul(self.beta).add_(batch_norm, alpha=1 - self.beta)
        self.steps += 1
        if self.anchor == "target":
            a = norms[self.tasks.index(self.target_task or self.tasks[0])]
        elif self.anchor == "max":
            a = norms.max(dim=0).values
        else:
            a = norms.mean(dim=0)
        r = self.relax_factor
        return torch.div(a * r, norms + self.eps).add_(1 - r)
