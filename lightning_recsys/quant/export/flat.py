"""The flat tensor call every exporter traces: a model's batch as a tuple of named tensors.

A model taking a :class:`~lightning_recsys.data.RecsysBatch` gets ``dense`` [B, num_dense] float32;
``sparse_ids`` [B, K] int64 with one column per single-hot, unweighted feature (``-1`` for an empty
bag); then per other sparse feature ``<name>__ids`` [B, L] int64 padded with ``-1`` (and
``<name>__weights`` [B, L] float32 when the example batch has per-id weights). A model taking its
own inputs gets one tensor per leaf of its call (:mod:`.input_spec`). :func:`prepare_call` builds
the module to trace (the model with its tables lowered, :mod:`.lowering`), its example tensors, their
names and dynamic shapes, and the input layout an artifact records so a predictor can rebuild them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> call = prepare_call(nn.Linear(4, 1), torch.randn(8, 4))
    >>> call.names, call.inputs["kind"]
    (['input'], 'tree')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...data.batch import RecsysBatch, SparseFeature
from .input_spec import Call, CallFromFlat, bind_example, dynamic_shapes_for, flatten_call
from .lowering import StackedColumn, lower_tables

__all__ = ["FlatRecsysModel", "LogitsFromFlat", "PreparedCall", "SEP", "STACKED_INPUT", "flatten_batch", "grow_batch",
           "layout_feeds", "output_logits", "prepare_call"]

STACKED_INPUT = "sparse_ids"
#: separator of a feature name and its part in a flattened input name (``"f__ids"``, ``"f__weights"``)
SEP = "__"


def flatten_batch(
    batch: RecsysBatch,
    features: list[str],
    weighted: list[str],
    min_len: int = 1,
    single_hot: tuple | list = (),
    stacked: tuple | list = (),
) -> dict[str, np.ndarray]:
    """ONNX inputs for ``batch``: ``dense`` and per feature padded ``__ids`` (-1) / ``__weights``;
    features in ``single_hot`` get 1-D ``[B]`` ids (-1 for an empty bag). The single-hot, unweighted
    features in ``stacked`` come as the columns of one ``sparse_ids`` [B, len(stacked)] input instead."""
    bad = [n for n in stacked if n not in single_hot or n in weighted]
    if bad:
        raise ValueError(f"stacked features {bad} must be single-hot and unweighted")
    if not isinstance(batch, RecsysBatch):
        raise TypeError(f"batch must be a RecsysBatch, got {type(batch).__name__}")
    missing = [f for f in features if f not in batch.sparse]
    if missing:
        raise ValueError(f"batch lacks sparse features {missing} that the exported model needs")
    b = batch.batch_size
    out = {"dense": batch.dense.detach().float().cpu().numpy()}
    for name in features:
        f = batch.sparse[name]
        values, offsets = f.values.cpu().long().numpy(), f.offsets.cpu().long().numpy()
        if offsets.shape[0] != b + 1:
            raise ValueError(f"sparse feature {name!r} has {offsets.shape[0] - 1} bags, the batch has {b} rows")
        lengths = np.diff(offsets)
        if name in single_hot:
            if b and int(lengths.max()) > 1:
                raise ValueError(
                    f"sparse feature {name!r} was exported single-hot (one id per bag) but this batch has bags of "
                    f"up to {int(lengths.max())} ids; export with a multi-hot example batch"
                )
            has = lengths == 1
            ids = np.full((b,), -1, dtype=np.int64)
            ids[has] = values[offsets[:-1][has]]
            out[name + SEP + "ids"] = ids
            if name in weighted:
                w = np.zeros((b,), dtype=np.float32)
                w[has] = 1.0 if f.weights is None else f.weights.detach().float().cpu().numpy()[offsets[:-1][has]]
                out[name + SEP + "weights"] = w
            continue
        width = max(int(lengths.max()) if b else 0, min_len)
        rows = np.repeat(np.arange(b), lengths)
        cols = np.arange(values.shape[0]) - offsets[:-1][rows]
        ids = np.full((b, width), -1, dtype=np.int64)
        ids[rows, cols] = values
        out[name + SEP + "ids"] = ids
        if name in weighted:
            w = np.zeros((b, width), dtype=np.float32)
            w[rows, cols] = 1.0 if f.weights is None else f.weights.detach().float().cpu().numpy()
            out[name + SEP + "weights"] = w
    if stacked:
        columns = [out.pop(n + SEP + "ids") for n in stacked]
        out = {"dense": out.pop("dense"), STACKED_INPUT: np.stack(columns, 1), **out}
    return out


def layout_feeds(batch: RecsysBatch, layout: dict[str, Any]) -> dict[str, np.ndarray]:
    """ONNX inputs for ``batch`` in the layout an export recorded (``export_onnx(...)["inputs"]``, also
    in the model's metadata), e.g. to feed your own ``onnxruntime.InferenceSession``."""
    if not isinstance(layout, dict) or layout.get("kind") != "recsys" or not {"features", "weighted"} <= set(layout):
        raise ValueError("layout must be the 'inputs' entry of an export of a RecsysBatch model (kind 'recsys', with "
                         f"'features' and 'weighted'), got {layout!r}")  # fmt: skip
    return flatten_batch(batch, layout["features"], layout["weighted"], single_hot=layout.get("single_hot", ()),
                         stacked=layout.get("stacked", ()))  # fmt: skip


def output_logits(out: Any) -> Tensor:
    """The one logits tensor an artifact returns for a model's output: a tensor as is; a dict (towers
    per task) as its entries' columns side by side, ``[B, T]`` in key order; a tuple / list as its first
    element (``(logits, extras)``), as :class:`~lightning_recsys.data.ModelContract` reads outputs."""
    if isinstance(out, Mapping):
        if not out or not all(isinstance(v, Tensor) and v.dim() >= 1 for v in out.values()):
            raise TypeError("an exported model's dict output must hold one logits tensor ([B] or [B, k]) per task, got "
                            f"{ {k: type(v).__name__ for k, v in out.items()} }")  # fmt: skip
        return torch.cat([v.reshape(v.shape[0], -1) for v in out.values()], 1)
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"an exported model must return logits: a tensor, a dict of them per task or a tuple whose first "
                        f"item is one; forward returned {type(out).__name__}")  # fmt: skip
    return out


def _output_tasks(module: nn.Module, args: tuple[Tensor, ...]) -> list[str] | None:
    """The keys of ``module.call(*args)`` when it is a dict of one logits column per task, else ``None``
    (also when the call fails: the export then reports why)."""
    try:
        with torch.no_grad():
            out = module.call(*args)
    except Exception:  # noqa: BLE001 - the exporter traces the same call and names the error
        return None
    if isinstance(out, Mapping) and all(isinstance(v, Tensor) and v[:1].numel() == 1 for v in out.values()):
        return [str(k) for k in out]
    return None


class FlatRecsysModel(nn.Module):
    """Takes the flattened tensors and calls the model with a RecsysBatch of padded features; returns
    :func:`output_logits` of its output."""

    def __init__(self, model: nn.Module, features: list[str], weighted: list[str], stacked: list[str] = ()) -> None:
        super().__init__()
        self.model, self.features, self.weighted, self.stacked = model, features, weighted, list(stacked)

    def forward(self, dense: Tensor, *flat: Tensor) -> Tensor:
        return output_logits(self.call(dense, *flat))

    def call(self, dense: Tensor, *flat: Tensor) -> Any:
        """The model's own output."""
        sparse, i = {}, 0
        if self.stacked:
            matrix, i = flat[0], 1
            offsets = torch.zeros(matrix.shape[0] + 1, dtype=matrix.dtype, device=matrix.device)  # unused when lowered
            for k, name in enumerate(self.stacked):
                sparse[name] = StackedColumn(values=matrix[:, k], offsets=offsets, matrix=matrix, column=k)
        for name in self.features:
            if name in sparse:
                continue
            ids = flat[i]
            i += 1
            weights = None
            if name in self.weighted:
                weights = flat[i]
                i += 1
            dummy_offsets = torch.zeros(ids.shape[0] + 1, dtype=ids.dtype, device=ids.device)  # unused by lowered tables
            sparse[name] = SparseFeature(values=ids, offsets=dummy_offsets, weights=weights)
        return self.model(RecsysBatch(dense=dense, sparse=sparse))


def grow_batch(batch: RecsysBatch) -> RecsysBatch:
    """Repeat a batch to at least 2 rows (dims of size 1 would be specialised by torch.export)."""
    if batch.batch_size >= 2:
        return batch
    reps = 2 if batch.batch_size == 1 else 0
    if reps == 0:
        raise ValueError("example_batch must have at least one row")
    sparse = {}
    for name, f in batch.sparse.items():
        n = f.values.numel()
        sparse[name] = SparseFeature(
            f.values.repeat(2), torch.tensor([0, n, 2 * n], dtype=f.offsets.dtype),
            None if f.weights is None else f.weights.repeat(2),
        )  # fmt: skip
    return RecsysBatch(batch.dense.repeat(2, 1), sparse, {})


class LogitsFromFlat(CallFromFlat):
    """:class:`CallFromFlat` returning :func:`output_logits` of the model's output."""

    def forward(self, *leaves: Tensor) -> Tensor:
        return output_logits(self.call(*leaves))

    def call(self, *leaves: Tensor) -> Any:
        """The model's own output."""
        return super().forward(*leaves)


@dataclasses.dataclass
class PreparedCall:
    """What an exporter traces: ``module(*args)`` with ``dynamic_shapes``; ``names`` name ``args``;
    ``inputs`` is the layout recorded in the artifact (kind ``"recsys"`` or ``"tree"``); ``tasks``: the
    keys of a dict output (one logits column each), else ``None``."""

    module: nn.Module
    args: tuple[Tensor, ...]
    names: list[str]
    dynamic_shapes: tuple
    inputs: dict[str, Any]
    tasks: list[str] | None = None


def prepare_call(model: nn.Module, example_batch: Any, single_hot: str | list[str] = "auto") -> PreparedCall:
    """The flat call of ``model`` on ``example_batch`` (see the module doc); ``single_hot`` as in
    :func:`~lightning_recsys.quant.export_onnx`. The batch dimension and every bag length are dynamic."""
    if isinstance(example_batch, RecsysBatch):
        features = list(example_batch.sparse)
        weighted = [n for n, f in example_batch.sparse.items() if f.weights is not None]
        if single_hot == "auto":
            single_hot = [n for n, f in example_batch.sparse.items() if bool((f.lengths == 1).all())]
        single_hot = list(single_hot)
        stacked = [n for n in single_hot if n not in weighted]
        example = grow_batch(example_batch)
        flat = flatten_batch(example, features, weighted, min_len=2, single_hot=single_hot, stacked=stacked)
        names = list(flat)
        batch_dim = torch.export.Dim("batch")
        shapes: list[dict] = [{0: batch_dim}]
        for n in names[1:]:  # every bag length is dynamic; a feature's weights share its ids' length
            if n == STACKED_INPUT or n.split(SEP)[0] in single_hot:
                shapes.append({0: batch_dim})
                continue
            length = torch.export.Dim(f"len_{len(shapes)}") if n.endswith("ids") else shapes[-1][1]
            shapes.append({0: batch_dim, 1: length})
        module, args = FlatRecsysModel(lower_tables(model).eval(), features, weighted, stacked), tuple(
            torch.from_numpy(v) for v in flat.values())  # fmt: skip
        return PreparedCall(
            module, args, names, (shapes[0], tuple(shapes[1:])),
            {"kind": "recsys", "features": features, "weighted": weighted, "single_hot": single_hot, "stacked": stacked,
             "num_dense": int(example.dense.shape[1])}, _output_tasks(module, args),
        )  # fmt: skip
    if single_hot != "auto":
        raise ValueError("single_hot applies to RecsysBatch examples only; a model taking its own inputs gets the ids "
                         f"it is given, got single_hot={single_hot!r}")  # fmt: skip
    call = Call(*bind_example(model, example_batch))
    spec, names, leaves = flatten_call(model, call.args, call.kwargs)
    if not leaves:
        raise TypeError("example_batch holds no tensor: the exported graph would have no input")
    module, args = LogitsFromFlat(lower_tables(model, native=True).eval(), spec, (call.args, call.kwargs)), tuple(
        t.detach() for t in leaves)  # fmt: skip
    return PreparedCall(module, args, names, dynamic_shapes_for(leaves), {"kind": "tree", "spec": spec, "names": names},
                        _output_tasks(module, args))  # fmt: skip
