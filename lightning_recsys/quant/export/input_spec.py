"""Nested model inputs for export: flatten a call's arguments to named tensors and back.

A model exported with its own inputs (anything but a :class:`~lightning_recsys.data.RecsysBatch`) may
take tensors, tuples / lists / dicts of them, nested to any depth, dataclasses of them, and constant
leaves (``None``, bools, numbers, strings: baked into the graph). :func:`bind_example` decides how an
``example_batch`` is passed to ``forward`` (checked against its signature): a tuple or list is the
positional arguments, or the one argument when ``forward`` cannot take them as positional arguments;
a dict is the one argument, or the keyword arguments when ``forward`` takes one argument of none of
its keys; anything else is the one argument.

The structure is stored as JSON (``export_onnx``'s ``meta["inputs"]``, kind ``"tree"``)::

    {"kind": "tree",
     "spec": {"args": [node, ...], "kwargs": {"name": node, ...}},
     "names": ["dense", "ids.0", ...],        # ONNX input name of each tensor leaf, in order
     "tensors": [{"name": "dense", "dtype": "float32", "shape": ["s0", 4]}, ...]}  # graph inputs

with ``node`` one of ``{"tensor": i}`` (leaf ``i`` of ``names``), ``{"const": value}``,
``{"tuple": [node, ...]}``, ``{"list": [node, ...]}``, ``{"dict": {"key": node, ...}}`` and
``{"dataclass": "module.Class", "fields": {"name": node, ...}}``. A name is the path of its leaf
from the parameter name (``sparse.user.0``). A dimension is an int when the graph fixed it, a symbol
name when it is dynamic; a tensor the graph does not read has no entry in ``tensors``.
:func:`tree_feeds` flattens a new batch of the same structure (numpy arrays or tensors; extra dict
keys are ignored, as are missing ones the graph does not read; another structure, a missing key
the graph reads, a dtype of another kind or another size of a fixed dim raise ``ValueError``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Call", "bind_example", "flatten_call", "rebuild_call", "CallFromFlat", "resolve_call", "tree_feeds"]


@dataclasses.dataclass(frozen=True)
class Call:
    """The positional and keyword arguments of one call of a model's forward."""

    args: tuple
    kwargs: dict


_CONSTANTS = (type(None), bool, int, float, str)


def _binds(sig: inspect.Signature | None, args: tuple, kwargs: dict) -> bool:
    if sig is None:
        return False
    try:
        sig.bind(*args, **kwargs)
        return True
    except TypeError:
        return False


def _signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return None


def bind_example(model: nn.Module, example: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)`` from an ``example_batch`` (rule in the module doc)."""
    if isinstance(example, Call):
        return tuple(example.args), dict(example.kwargs)
    sig = _signature(model)
    if isinstance(example, (tuple, list)) and not _is_namedtuple(example):
        if sig is None or _binds(sig, tuple(example), {}):
            return tuple(example), {}
        if _binds(sig, (example,), {}):
            return (example,), {}
        raise TypeError(
            f"example_batch is a {type(example).__name__} of {len(example)} items but {type(model).__name__}.forward"
            f"{sig} takes neither them as its positional arguments nor the {type(example).__name__} as its one argument"
        )
    if isinstance(example, Mapping) and sig is not None and not _binds(sig, (example,), {}):
        if all(isinstance(k, str) for k in example) and _binds(sig, (), dict(example)):
            return (), dict(example)
        raise TypeError(f"example_batch is a dict with keys {list(example)} but {type(model).__name__}.forward{sig} "
                        "takes neither the dict as its one argument nor its keys as keyword arguments")  # fmt: skip
    if sig is not None and not _binds(sig, (example,), {}):
        raise TypeError(f"{type(model).__name__}.forward{sig} cannot be called with example_batch (a "
                        f"{type(example).__name__}) as its one argument; pass a tuple of its positional arguments")  # fmt: skip
    return (example,), {}


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _param_names(model: nn.Module, args: tuple) -> list[str]:
    sig = _signature(model)
    names: list[str] = []
    if sig is not None:
        for p in sig.parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                names.append(p.name)
            elif p.kind == p.VAR_POSITIONAL:
                names.extend(f"{p.name}.{i}" for i in range(len(args) - len(names)))
    return [names[i] if i < len(names) else f"input_{i}" for i in range(len(args))]


def flatten_call(model: nn.Module, args: tuple, kwargs: dict) -> tuple[dict, list[str], list[Tensor]]:
    """``(spec, names, leaves)`` for ``model(*args, **kwargs)``; raises ``TypeError`` naming an
    unsupported leaf (its path) and what is supported."""
    names: list[str] = []
    leaves: list[Tensor] = []

    def walk(x: Any, path: str) -> dict:
        if isinstance(x, Tensor):
            name, k = path, 1
            while name in names:
                name, k = f"{path}_{k}", k + 1
            names.append(name)
            leaves.append(x)
            return {"tensor": len(leaves) - 1}
        if isinstance(x, _CONSTANTS):
            return {"const": x}
        if isinstance(x, (tuple, list)):
            return {"tuple" if isinstance(x, tuple) else "list": [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, Mapping):
            bad = [k for k in x if not isinstance(k, str)]
            if bad:
                raise TypeError(f"input {path!r}: dict keys must be strings to be recorded in the ONNX metadata, got {bad[:3]}")
            return {"dict": {k: walk(v, f"{path}.{k}") for k, v in x.items()}}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            fields = [f.name for f in dataclasses.fields(x) if f.init]
            return {"dataclass": f"{type(x).__module__}.{type(x).__qualname__}",
                    "fields": {f: walk(getattr(x, f), f"{path}.{f}") for f in fields}}  # fmt: skip
        raise TypeError(
            f"input {path!r} is a {type(x).__name__}; export_onnx takes tensors, tuples / lists / dicts of them (nested), "
            "dataclasses of them, None / bool / int / float / str constants, or a RecsysBatch"
        )

    spec = {"args": [walk(a, n) for a, n in zip(args, _param_names(model, args))],
            "kwargs": {k: walk(v, k) for k, v in kwargs.items()}}  # fmt: skip
    return spec, names, leaves


def rebuild_call(spec: dict, leaves: list | tuple, template: tuple[tuple, dict]) -> tuple[tuple, dict]:
    """The inverse of :func:`flatten_call`; ``template`` (the example call) restores container types
    (named tuples, dataclasses)."""

    def build(node: dict, tmpl: Any) -> Any:
        if "tensor" in node:
            return leaves[node["tensor"]]
        if "const" in node:
            return node["const"]
        if "dict" in node:
            items = {k: build(v, tmpl[k]) for k, v in node["dict"].items()}
            return type(tmpl)(items) if type(tmpl) in (dict, OrderedDict) else items
        if "dataclass" in node:
            return dataclasses.replace(tmpl, **{k: build(v, getattr(tmpl, k)) for k, v in node["fields"].items()})
        items = [build(v, t) for v, t in zip(node.get("tuple", node.get("list")), tmpl)]
        if _is_namedtuple(tmpl):
            return type(tmpl)(*items)
        return tuple(items) if "tuple" in node else items

    args, kwargs = template
    return tuple(build(n, a) for n, a in zip(spec["args"], args)), {k: build(n, kwargs[k]) for k, n in spec["kwargs"].items()}


class CallFromFlat(nn.Module):
    """``forward(*leaves)``: rebuilds the nested call recorded in ``spec`` and calls ``model``."""

    def __init__(self, model: nn.Module, spec: dict, template: tuple[tuple, dict]) -> None:
        super().__init__()
        self.model, self.spec, self.template = model, spec, template

    def forward(self, *leaves: Tensor) -> Any:
        args, kwargs = rebuild_call(self.spec, leaves, self.template)
        return self.model(*args, **kwargs)


def call_forms(spec: dict, args: tuple, kwargs: dict) -> list[tuple[tuple, dict]]:
    """The ways a predictor call ``p(*args, **kwargs)`` may map onto the exported forward: as is, or
    one tuple / list holding the positional arguments, or one dict holding the keyword arguments (the
    forms ``example_batch`` takes)."""
    forms = [(args, kwargs)]
    if len(args) == 1 and not kwargs:
        (x,) = args
        if isinstance(x, (tuple, list)) and not _is_namedtuple(x):
            forms.append((tuple(x), {}))
        if isinstance(x, Mapping) and not spec["args"] and spec["kwargs"]:
            forms.append(((), dict(x)))
    return forms


def _flatten_like(spec: dict, args: tuple, kwargs: dict, count: int) -> list:
    out: list = [None] * count

    def walk(node: dict, x: Any, path: str) -> None:
        if "tensor" in node:
            if not isinstance(x, (Tensor, np.ndarray)):
                raise ValueError(f"input {path!r} must be a tensor (as at export), got {type(x).__name__}")
            out[node["tensor"]] = x
        elif "const" in node:
            if not (x is node["const"] or (type(x) is type(node["const"]) and x == node["const"])):
                raise ValueError(f"input {path!r} was the constant {node['const']!r} at export (fixed in the graph), got {x!r}")
        elif "dict" in node:
            if not isinstance(x, Mapping):
                raise ValueError(f"input {path!r} must be a dict with keys {list(node['dict'])} (as at export), got "
                                 f"{type(x).__name__}")  # fmt: skip
            for k, v in node["dict"].items():  # a missing key is refused only if the graph reads it (tree_feeds)
                if k in x:
                    walk(v, x[k], f"{path}.{k}")
        elif "dataclass" in node:
            for k, v in node["fields"].items():
                if not hasattr(x, k):
                    raise ValueError(f"input {path!r} must be a {node['dataclass']} (as at export), got {type(x).__name__}")
                walk(v, getattr(x, k), f"{path}.{k}")
        else:
            items = node.get("tuple", node.get("list"))
            if not isinstance(x, (tuple, list)) or len(x) != len(items):
                got = f"{type(x).__name__} of {len(x)}" if isinstance(x, (tuple, list)) else type(x).__name__
                raise ValueError(f"input {path!r} must be a tuple / list of {len(items)} items (as at export), got {got}")
            for i, (v, item) in enumerate(zip(items, x)):
                walk(v, item, f"{path}.{i}")

    if len(args) != len(spec["args"]) or set(kwargs) != set(spec["kwargs"]):
        raise ValueError(f"the exported forward takes {len(spec['args'])} positional arguments and keyword arguments "
                         f"{sorted(spec['kwargs'])}, got {len(args)} and {sorted(kwargs)}")  # fmt: skip
    for i, (node, x) in enumerate(zip(spec["args"], args)):
        walk(node, x, f"argument {i}")
    for k, node in spec["kwargs"].items():
        walk(node, kwargs[k], k)
    return out


def _array(x: Any, info: dict) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    want = np.dtype(info["dtype"])
    if a.dtype != want:
        if a.dtype.kind != want.kind and not {a.dtype.kind, want.kind} <= {"i", "u"}:
            raise ValueError(f"input {info['name']!r} must be {want} (as at export), got {a.dtype}")
        a = a.astype(want)
    shape = info["shape"]
    if a.ndim != len(shape):
        raise ValueError(f"input {info['name']!r} must have {len(shape)} dims (as at export), got shape {list(a.shape)}")
    for d, (n, s) in enumerate(zip(a.shape, shape)):
        if isinstance(s, int) and n != s:
            raise ValueError(f"input {info['name']!r} has size {n} in dim {d}, the graph fixed it to {s} at export (the "
                             "example had that size and the model's code made it static); export with another example")  # fmt: skip
    return a


def resolve_call(layout: dict, args: tuple, kwargs: dict | None = None) -> tuple[tuple, dict, list]:
    """``(args, kwargs, leaves)``: the form of ``p(*args, **kwargs)`` (:func:`call_forms`, or a
    :class:`Call`) that matches the structure recorded in ``layout``, and its flattened leaves."""
    if not isinstance(layout, dict) or layout.get("kind") != "tree":
        raise ValueError("layout must be the 'inputs' entry of an export of a model taking its own inputs (kind 'tree'), "
                         f"got {layout!r}")  # fmt: skip
    spec = layout["spec"]
    if len(args) == 1 and not kwargs and isinstance(args[0], Call):
        args, kwargs = tuple(args[0].args), dict(args[0].kwargs)
    error: ValueError | None = None
    for a, kw in call_forms(spec, tuple(args), dict(kwargs or {})):
        try:
            return a, kw, _flatten_like(spec, a, kw, len(layout["names"]))
        except ValueError as e:
            error = error or e
    raise error  # type: ignore[misc]


def tree_feeds(layout: dict, args: tuple, kwargs: dict | None = None) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds for a call ``forward(*args, **kwargs)`` of an export whose ``meta["inputs"]``
    is ``layout`` (kind ``"tree"``); also accepts the ``example_batch`` forms (:func:`call_forms`)."""
    _, _, leaves = resolve_call(layout, args, kwargs)
    by_name = dict(zip(layout["names"], leaves))
    missing = [info["name"] for info in layout["tensors"] if by_name[info["name"]] is None]
    if missing:
        raise ValueError(f"the batch lacks inputs {missing} that the exported graph reads (a dict key missing)")
    return {info["name"]: _array(by_name[info["name"]], info) for info in layout["tensors"]}


def _fixed_size(size: Any, ranges: dict) -> int | None:
    """``size`` when an int, or a symbol whose range is one value (a deferred ``s == 4`` check)."""
    if isinstance(size, int):
        return size
    vr = {str(k): v for k, v in ranges.items()}.get(str(size))
    return int(vr.lower) if vr is not None and vr.lower == vr.upper else None


def graph_inputs(proto: Any, program: Any, names: list[str]) -> list[dict]:
    """Name, numpy dtype and shape (int when fixed, symbol name when dynamic) of each graph input, after
    fixing the graph's inputs in place:

    * an input no node reads is removed (a batch need not carry it);
    * a dim that ``torch.export`` fixed (e.g. the width a Linear reads; ``program`` is the
      ``torch.onnx`` result) is written as a number (the exporter leaves every dim that ``Dim.AUTO``
      asked for symbolic), so ONNX Runtime and :func:`tree_feeds` refuse another size."""
    from onnx import helper

    read = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    kept = [i for i in proto.graph.input if i.name in read]
    if len(kept) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    ep = getattr(program, "exported_program", None)
    if ep is not None:
        placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        users = ep.graph_signature.user_inputs
        if len(users) == len(names):
            shapes = {n: getattr(placeholders[u].meta.get("val"), "shape", None) for n, u in zip(names, users)}
            for value in proto.graph.input:
                for dim, size in zip(value.type.tensor_type.shape.dim, shapes.get(value.name) or ()):
                    fixed = _fixed_size(size, ep.range_constraints)
                    if fixed is not None:
                        dim.Clear()
                        dim.dim_value = fixed
    out = []
    for i in proto.graph.input:
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out.append({"name": i.name, "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name, "shape": dims})
    return out


def dynamic_shapes_for(leaves: list[Tensor]) -> tuple:
    """``torch.export`` dynamic shapes for ``CallFromFlat(*leaves)``: every dim ``Dim.AUTO`` (dynamic
    unless the model's code fixes it, e.g. a Linear's input width)."""
    auto = torch.export.Dim.AUTO
    return (tuple({d: auto for d in range(t.dim())} for t in leaves),)
