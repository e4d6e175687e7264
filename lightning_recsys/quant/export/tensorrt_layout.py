"""The inputs of a TensorRT program: which tensors, which dims are dynamic, and their min/opt/max.

TensorRT compiles one optimisation profile per input: every dynamic dim needs a range. Two layouts:

* a :class:`~lightning_recsys.data.RecsysBatch` is flattened as for ONNX (:mod:`.flat`): ``dense``
  and per feature padded ``<name>__ids`` (and ``__weights``); the batch dim is ``[1, max_batch]`` and
  each multi-hot feature's bag length ``[1, max_bag_len]``;
* a model's own inputs (tensors, tuples / lists / dicts of them: kind ``"tree"``, :mod:`.input_spec`)
  are flattened leaf by leaf; the role of each leaf comes from one eager call
  (:func:`~.example_rows.infer_roles`): batch-major leaves get the batch dim, ``nn.EmbeddingBag``
  offsets the batch dim (``+ 1`` with ``include_last_offset``), and the 1-D ids (and
  ``per_sample_weights``) of a bag group one dim of ``[0, max_batch * max_bag_len]`` ids. Every other
  dim keeps the example's size. With ``include_last_offset`` bags the batch starts at 2 rows
  (torch.export specialises the one-bag case of ``batch + 1`` offsets).

Example:
    >>> import torch
    >>> from torch import nn
    >>> layout = tensorrt_layout(nn.Linear(4, 1), torch.randn(8, 4), "auto", max_batch=64, max_bag_len=8)
    >>> layout.meta["shapes"]["input"]["max"]
    [64, 4]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...data.batch import RecsysBatch
from .example_rows import infer_roles, select_rows
from .flat import SEP, FlatRecsysModel, LogitsFromFlat, flatten_batch, grow_batch
from .input_spec import Call, bind_example, flatten_call, resolve_call

__all__ = ["TensorRTLayout", "tensorrt_inputs", "tensorrt_layout"]


@dataclass
class TensorRTLayout:
    """``wrap(lowered)`` -> the module to export; ``args`` its example inputs; ``dynamic_shapes`` as
    ``torch.export`` takes them for ``forward(*args)``; ``meta``: ``inputs`` (the layout),
    ``input_names``, ``shapes`` (per input: dtype and min/opt/max shapes)."""

    kind: str
    args: tuple[Tensor, ...]
    dynamic_shapes: tuple
    meta: dict[str, Any]
    _wrap: Any

    def wrap(self, lowered: nn.Module) -> nn.Module:
        return self._wrap(lowered)


def _range(meta_shapes: dict, name: str, t: Tensor, dims: dict[int, tuple[int, int, int, str, str]]) -> None:
    """Record ``name``'s min/opt/max shapes; refuse an example outside the ranges."""
    shape = {"min": list(t.shape), "opt": list(t.shape), "max": list(t.shape)}
    for dim, (lo, opt, hi, what, limit) in dims.items():
        if int(t.shape[dim]) > hi:
            raise ValueError(f"example_batch input {name!r} has {int(t.shape[dim])} {what}, more than {limit}")
        shape["min"][dim], shape["opt"][dim], shape["max"][dim] = lo, max(lo, min(opt, hi)), hi
    meta_shapes[name] = {**shape, "dtype": str(t.dtype).removeprefix("torch.")}


def _recsys(example_batch: RecsysBatch, single_hot: str | list[str], opt: int, max_batch: int, max_bag_len: int) -> TensorRTLayout:
    features = list(example_batch.sparse)
    weighted = [n for n, f in example_batch.sparse.items() if f.weights is not None]
    if single_hot == "auto":
        single_hot = [n for n, f in example_batch.sparse.items() if bool((f.lengths == 1).all())]
    unknown = sorted(set(single_hot) - set(features))
    if unknown:
        raise ValueError(f"single_hot names features {unknown} that example_batch does not have ({features})")
    example = grow_batch(example_batch)
    flat = flatten_batch(example, features, weighted, min_len=2, single_hot=list(single_hot))
    names, args = list(flat), tuple(torch.from_numpy(v) for v in flat.values())
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    lengths: dict[str, Any] = {}
    dims, labels, shapes = [], {}, {}
    rows = (1, opt, max_batch, "rows", f"max_batch={max_batch}")
    for n, t in zip(names, args):
        spec, label, ranges = {0: batch}, {0: "batch"}, {0: rows}
        feature, _, part = n.rpartition(SEP)
        if part in ("ids", "weights") and feature not in single_hot:
            key = f"len_{feature}"  # a feature's weights share its ids' length
            lengths.setdefault(key, torch.export.Dim(f"len_{len(lengths)}", min=1, max=max_bag_len))
            spec[1], label[1] = lengths[key], key
            ranges[1] = (1, int(t.shape[1]), max_bag_len, "ids in a bag", f"max_bag_len={max_bag_len}")
        dims.append(spec)
        labels[n] = label
        _range(shapes, n, t, ranges)
    layout = {"kind": "recsys", "features": features, "weighted": weighted, "single_hot": list(single_hot),
              "num_dense": int(example.dense.shape[1])}  # fmt: skip
    return TensorRTLayout("recsys", args, (dims[0], tuple(dims[1:])),
                          {"inputs": layout, "input_names": names, "dynamic_dims": labels, "shapes": shapes},
                          lambda lowered: FlatRecsysModel(lowered, features, weighted))  # fmt: skip


def _tree(model: nn.Module, example_batch: Any, opt: int, max_batch: int, max_bag_len: int) -> TensorRTLayout:
    call = Call(*bind_example(model, example_batch))
    spec, names, leaves = flatten_call(model, call.args, call.kwargs)
    if not leaves:
        raise TypeError("example_batch holds no tensor: the TensorRT program would have no input")
    found = infer_roles(model.eval(), call.args, call.kwargs, names, leaves)
    if isinstance(found, str):
        raise ValueError(f"TensorRT needs a range for every dynamic dim, so it must tell the batch's rows from bag ids: "
                         f"{found}. Pass a RecsysBatch, or inputs that are batch-major tensors and nn.EmbeddingBag "
                         "ids / offsets")  # fmt: skip
    b, roles = found
    if b < 2:  # torch.export specialises a dim of size 1: the example's one row twice
        leaves, b = select_rows(leaves, roles, [0] * 2), 2
    leaves = [t.detach().cpu() for t in leaves]
    # torch.export specialises a bag count of 1 derived from include_last_offset offsets (batch + 1):
    # such programs take batches of 2 rows or more, and the profile says so
    least = 2 if any(r[0] == "offsets" and r[1] for r in roles.values()) else 1
    batch = torch.export.Dim("batch", min=least, max=max_batch)
    rows = (least, opt, max_batch, "rows", f"max_batch={max_batch}")
    most_ids = max_batch * max_bag_len
    ids_dims: dict[int, Any] = {}
    dims, labels, shapes = [], {}, {}
    for j, (n, t) in enumerate(zip(names, leaves)):
        role = roles[j]
        if role[0] == "rows":
            dim, label, ranges = {0: batch}, {0: "batch"}, {0: rows}
        elif role[0] == "offsets":
            csr = int(role[1])
            dim, label = {0: batch + csr if csr else batch}, {0: "batch+1" if csr else "batch"}
            ranges = {0: (least + csr, opt + csr, max_batch + csr, "offsets", f"max_batch={max_batch} (+1)")}
        else:  # the 1-D ids / per_sample_weights of the bags of offsets leaf role[1]
            group = role[1]
            ids_dims.setdefault(group, torch.export.Dim(f"ids_{len(ids_dims)}", min=0, max=most_ids))
            dim, label = {0: ids_dims[group]}, {0: f"ids of {names[group]}"}
            ranges = {0: (0, int(t.shape[0]), most_ids, "ids", f"max_batch * max_bag_len={most_ids}")}
        dims.append(dim)
        labels[n] = label
        _range(shapes, n, t, ranges)
    template = (call.args, call.kwargs)
    return TensorRTLayout("tree", tuple(leaves), (tuple(dims),),
                          {"inputs": {"kind": "tree", "spec": spec, "names": names}, "input_names": names,
                           "dynamic_dims": labels, "shapes": shapes},
                          lambda lowered: LogitsFromFlat(lowered, spec, template))  # fmt: skip


def tensorrt_layout(model: nn.Module, example_batch: Any, single_hot: str | list[str], max_batch: int,
                    max_bag_len: int, opt_batch: int | None = None) -> TensorRTLayout:  # fmt: skip
    """The layout of ``model``'s inputs for ``example_batch`` (see the module doc); ``single_hot`` as in
    :func:`~lightning_recsys.quant.export_onnx` (RecsysBatch only)."""
    opt = max_batch if opt_batch is None else opt_batch
    if isinstance(example_batch, RecsysBatch):
        return _recsys(example_batch, single_hot, opt, max_batch, max_bag_len)
    if single_hot != "auto":
        raise ValueError(f"single_hot applies to RecsysBatch examples only, got single_hot={single_hot!r}")
    return _tree(model, example_batch, opt, max_batch, max_bag_len)


def tensorrt_inputs(batch: Any, meta: dict[str, Any], device: str | torch.device = "cpu") -> tuple[Tensor, ...]:
    """The program's inputs for ``batch`` (in the form the example took; layout, dtypes and shape
    limits from ``meta``)."""
    layout, names = meta["inputs"], meta["input_names"]
    dtypes = meta.get("dtypes") or [meta["shapes"][n]["dtype"] for n in names]
    if layout["kind"] == "recsys":
        flat = flatten_batch(batch, layout["features"], layout["weighted"], single_hot=layout["single_hot"])
        tensors = [torch.from_numpy(flat[n]) for n in names]
    elif layout["kind"] == "tree":
        _, _, leaves = resolve_call(layout, (batch,))
        missing = [n for n, t in zip(names, leaves) if t is None]
        if missing:
            raise ValueError(f"the batch lacks inputs {missing} that the TensorRT program takes (a dict key missing)")
        tensors = [t if isinstance(t, Tensor) else torch.as_tensor(t) for t in leaves]
    else:
        raise ValueError(f"unknown input layout kind {layout['kind']!r}; re-export the model")
    out = []
    for n, t, dt in zip(names, tensors, dtypes):
        limits = meta.get("shapes", {}).get(n)
        if limits and t.dim() and not all(lo <= s <= hi for s, lo, hi in zip(t.shape, limits["min"], limits["max"])):
            raise ValueError(
                f"input {n!r} has shape {tuple(t.shape)}, outside the exported range {limits['min']}..{limits['max']} "
                "(re-export with a larger max_batch / max_bag_len)"
            )
        out.append(t.to(device=device, dtype=getattr(torch, dt)))
    return tuple(out)
