"""``ModelContract``: how to call a model on a batch, where the batch's labels are, and the task names.

One convention for every consumer that runs a model it did not write: calibration, the sensitivity
analysis and plan search, and the quantization pipeline. ``ModelContract.infer(model, batch)`` derives
it from the model and one batch; an option fixes what cannot be derived.

* **inputs**: a :class:`~lightning_recsys.data.RecsysBatch` is passed whole (``model(batch)``). A tuple
  / list batch is ``(inputs..., labels)``: ``model(*inputs)`` (or its first items, as many as
  ``forward`` takes). A dict batch with a label key
  (``labels``, ``label``, ``y``, ``target``, or ``label_key``) is ``model(features)`` or, when that
  fails, ``model(**features)``. Any other batch is passed whole. ``forward_fn`` (a callable
  ``fn(model, batch) -> outputs`` or the name of a model method) replaces all of this.
* **logits** ``[B, T]``: a tensor ``[B]`` or ``[B, T]``; the first element of a tuple / list output; the
  entries of a dict output, one per task (in task order when its keys are the task names).
* **labels** ``[B, T]``: ``batch.labels[task]`` for each task of a RecsysBatch; the last element of a
  tuple; the label key of a dict; ``label_key`` (a key, an index or a callable) replaces this.
* **tasks**: ``tasks=``, else the model's ``tasks`` attribute (``RecsysModule`` has one), else one
  name per logit column: the keys of a dict output, a RecsysBatch's first label names, else ``task0``,
  ``task1``...

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 1)
    >>> batch = (torch.randn(8, 3), torch.randint(0, 2, (8,)).float())
    >>> contract = ModelContract.infer(model, batch)
    >>> contract.logits(model, batch).shape, contract.labels(batch).shape, contract.tasks
    (torch.Size([8, 1]), torch.Size([8, 1]), ('task0',))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batch import RecsysBatch

__all__ = ["LABEL_KEYS", "ModelContract", "as_logits"]

#: dict keys searched for the labels of a dict batch, in order
LABEL_KEYS = ("labels", "label", "y", "target")

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
_LABEL_HINT = "say where they are with label_key= (a key or an index; label_fn= fn(batch) -> labels in the quant search)"


@dataclass(frozen=True)
class ModelContract:
    """``inputs(batch) -> (args, kwargs)`` for ``model(*args, **kwargs)`` (``None`` when a custom
    ``forward_fn`` calls the model), ``call(model, batch)`` -> raw outputs, ``labels(batch) -> [B, T]``
    and the ``tasks`` in the order of the logits' columns."""

    call: Callable[[nn.Module, Any], Any]
    labels: Callable[[Any], Tensor]
    tasks: tuple[str, ...]
    inputs: Callable[[Any], Inputs] | None = None

    def logits(self, model: nn.Module, batch: Any) -> Tensor:
        """The model's logits on ``batch`` as a float ``[B, T]`` tensor."""
        return as_logits(self.call(model, batch), self.tasks)

    @classmethod
    def infer(
        cls,
        model: nn.Module,
        batch: Any,
        *,
        forward_fn: Callable[[nn.Module, Any], Any] | str | None = None,
        label_key: str | int | Callable[[Any], Tensor] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> ModelContract:
        """Derive the contract from ``model`` and one ``batch`` (the model is called on it in eval mode
        without gradients: to pick the call form and, when no task names are known, to count the
        logit columns). Raises naming the option to set when a part cannot be derived."""
        if forward_fn is not None and not (callable(forward_fn) or isinstance(forward_fn, str)):
            raise TypeError(f"forward_fn must be a callable fn(model, batch) or a method name, got {type(forward_fn).__name__}")
        if label_key is not None and not (callable(label_key) or isinstance(label_key, (str, int))):
            raise TypeError(f"label_key must be a key, an index or a callable fn(batch), got {type(label_key).__name__}")
        inputs = None
        if forward_fn is not None:
            call = _method_call(forward_fn) if isinstance(forward_fn, str) else forward_fn
        else:
            inputs = _pick_inputs(model, batch, label_key)

            def call(m: nn.Module, b: Any, inputs: Callable[[Any], Inputs] = inputs) -> Any:
                args, kwargs = inputs(b)
                return m(*args, **kwargs)

        names = _task_names(model, batch, tasks) or _column_names(model, batch, call)
        try:
            labels = _label_fn(batch, label_key, names)
        except ValueError as err:  # calibration needs no labels: fail only when they are asked for
            labels = _raiser(err)
        return cls(call, labels, names, inputs)


def as_logits(out: Any, tasks: Sequence[str] = ()) -> Tensor:
    """Model outputs as a float ``[B, T]`` tensor (see the module doc)."""
    if isinstance(out, Mapping):  # one entry per task: in task order when the names match, else in order
        keys = list(tasks) if tasks and all(t in out for t in tasks) else list(out)
        if not all(isinstance(out[k], Tensor) for k in keys):
            raise TypeError(f"a dict output must hold one tensor per task, got {sorted(out)}; pass forward_fn=")
        out = torch.stack([out[k].reshape(len(out[k]), -1)[:, 0] for k in keys], 1)
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"the model's output must be a tensor [B] or [B, T] (or hold one), got {type(out).__name__}; "
                        "pass forward_fn=")  # fmt: skip
    out = out.detach().float()
    return out[:, None] if out.dim() == 1 else out.reshape(out.shape[0], -1)


def _raiser(err: ValueError) -> Callable[[Any], Tensor]:
    def labels(batch: Any) -> Tensor:
        raise ValueError(str(err))

    return labels


def _method_call(name: str) -> Callable[[nn.Module, Any], Any]:
    def call(model: nn.Module, batch: Any) -> Any:
        fn = getattr(model, name, None)
        if not callable(fn):
            raise ValueError(f"forward_fn={name!r}: {type(model).__name__} has no such method")
        return fn(batch)

    return call


def _task_names(model: nn.Module, batch: Any, tasks: Sequence[str] | None) -> tuple[str, ...]:
    if tasks is not None:
        if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks must be a non-empty list of names, got {tasks!r}")
        return tuple(tasks)
    own = getattr(model, "tasks", None)
    if isinstance(own, (list, tuple)) and own and all(isinstance(t, str) for t in own):
        return tuple(own)
    return ()


@torch.no_grad()
def _column_names(model: nn.Module, batch: Any, call: Callable[[nn.Module, Any], Any]) -> tuple[str, ...]:
    """One name per column of the model's logits on ``batch``: a RecsysBatch's first label names, else
    ``task0``, ``task1``, ..."""
    was_training = model.training
    model.eval()
    try:
        out = call(model, batch)
    finally:
        model.train(was_training)
    if isinstance(out, Mapping):
        return tuple(str(k) for k in out)
    columns = as_logits(out).shape[1]
    if isinstance(batch, RecsysBatch) and len(batch.labels) >= columns:
        return tuple(batch.labels)[:columns]
    return tuple(f"task{i}" for i in range(columns))


def _label_fn(batch: Any, label_key: str | int | Callable[[Any], Tensor] | None, tasks: tuple[str, ...]) -> Callable[[Any], Tensor]:
    if callable(label_key):
        return lambda b: _as_2d(label_key(b), "label_key(batch)")
    if isinstance(batch, RecsysBatch) and label_key is None:
        def recsys(b: RecsysBatch) -> Tensor:
            missing = [t for t in tasks if t not in b.labels]
            if missing:
                raise ValueError(f"the batch has no labels for tasks {missing}; it has {sorted(b.labels)}: pass tasks= "
                                 "or label_key=")  # fmt: skip
            return torch.stack([b.labels[t].float() for t in tasks], 1)

        return recsys
    if isinstance(batch, Mapping):
        key = label_key if label_key is not None else next((k for k in LABEL_KEYS if k in batch), None)
        if key not in batch:
            raise ValueError(f"cannot find the labels in a dict batch with keys {sorted(batch)} (looked for {list(LABEL_KEYS)}): "
                             f"{_LABEL_HINT}")  # fmt: skip
        return lambda b: _as_2d(b[key], f"batch[{key!r}]")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        index = -1 if label_key is None else label_key
        if not isinstance(index, int) or not -len(batch) <= index < len(batch):
            raise ValueError(f"label_key={label_key!r} is not an index into a {len(batch)}-element batch")
        return lambda b: _as_2d(b[index], f"batch[{index}]")
    raise ValueError(f"cannot find the labels in a {type(batch).__name__} batch: {_LABEL_HINT}")


def _as_2d(y: Any, what: str) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"{what} must be a tensor of labels [B] or [B, T], got {type(y).__name__}")
    y = y.detach().float()
    return y[:, None] if y.dim() == 1 else y.reshape(y.shape[0], -1)


def _positional_arity(model: nn.Module) -> int | None:
    """How many positional arguments ``model.forward`` takes (``None`` with ``*args`` or no signature)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


def _candidates(model: nn.Module, batch: Any, label_key: Any) -> list[Callable[[Any], Inputs]]:
    """Call forms to try, most likely first."""
    if isinstance(batch, RecsysBatch):
        return [lambda b: ((b,), {})]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        index = -1 if not isinstance(label_key, int) else label_key
        n = len(batch)

        def rest(b: Any) -> tuple:
            return tuple(v for i, v in enumerate(b) if i != index % n)

        forms = [lambda b: (rest(b), {}), lambda b: ((rest(b),), {})]
        arity = _positional_arity(model)
        if arity is not None and 1 <= arity < n:  # forward(a, b, c) on (a, b, c, labels, extra...)
            forms.append(lambda b: (tuple(b[:arity]), {}))
        return [*forms, lambda b: ((b,), {})]
    if isinstance(batch, Mapping):
        key = label_key if isinstance(label_key, str) else next((k for k in LABEL_KEYS if k in batch), None)

        def features(b: Mapping) -> dict:
            return {k: v for k, v in b.items() if k != key}

        return [lambda b: ((features(b),), {}), lambda b: ((), features(b)), lambda b: ((b,), {})]
    return [lambda b: ((b,), {})]


@torch.no_grad()
def _pick_inputs(model: nn.Module, batch: Any, label_key: Any) -> Callable[[Any], Inputs]:
    was_training = model.training
    model.eval()
    errors = []
    try:
        for inputs in _candidates(model, batch, label_key):
            args, kwargs = inputs(batch)
            try:
                as_logits(model(*args, **kwargs))
                return inputs
            except Exception as err:  # noqa: BLE001 - the next call form may fit; all errors are reported below
                errors.append(f"{type(err).__name__}: {err}")
    finally:
        model.train(was_training)
    raise ValueError(f"cannot call {type(model).__name__} on a {type(batch).__name__} batch in any usual form "
                     f"({'; '.join(errors)}): pass forward_fn=(model, batch) -> logits")  # fmt: skip
