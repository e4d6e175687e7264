"""``export_onnx(model, path, example_batch)``: a fast ONNX graph of a (quantized) recsys model.

* Embedding bags are lowered to ``Gather`` + ``ReduceSum`` on padded ids (:mod:`.lowering`), never to
  the ``Loop`` that ``nn.EmbeddingBag`` exports to; row-wise int8/int4 tables stay row-wise.
* ``Int8Linear`` becomes ``DynamicQuantizeLinear`` + ``MatMulInteger`` + rescale (dynamic; ONNX
  Runtime fuses it into ``DynamicQuantizeMatMul``) or ``QuantizeLinear`` + ONNX Runtime's
  ``com.microsoft.MatMulIntegerToFloat`` (static; the faster of the two in ORT on CPU). A concat read
  by a static layer is concatenated after quantization, in uint8 (:mod:`.graph_rewrite`).
* fp16 tables and weights are stored as fp16 and cast in the graph.
* The batch dimension (and every bag length) is dynamic; ``onnx.checker`` runs on the result, and
  with ``verify=True`` an ONNX Runtime session must reproduce the PyTorch model within
  ``atol + rtol * |logit|`` (default ``1e-3 + 1e-3 |logit|``), except on rows where an int8 activation on
  a rounding tie went the other way (checked, counted in ``meta["parity"]``), or the export raises:
  on the example, on a batch of another size made from it (its first half, or its one row twice:
  :mod:`.example_rows`; skipped with a warning when the roles of a model's own inputs cannot be
  told, see ``meta["parity"]["other_size"]``) and on every batch in ``verify_batches``.

ONNX inputs for a model taking :class:`~lightning_recsys.data.RecsysBatch`: ``dense`` [B, num_dense]
float32; ``sparse_ids`` [B, K] int64 with one column per single-hot, unweighted feature (``-1`` for
an empty bag); then per other sparse feature ``<name>__ids`` [B, L] int64 padded with ``-1`` (and
``<name>__weights`` [B, L] float32 when the example batch has per-id weights); output ``logits``.
:func:`layout_feeds` builds them from a batch; the layout is stored in the model's metadata
(``metadata_props["lightning_recsys"]``) so :func:`lightning_recsys.quant.load` can rebuild it.
Models taking their own inputs (tensors, tuples / lists / dicts of them, nested: ``forward(dense, ids,
offsets)``, ``forward(batch: dict)``, ...) are exported with one ONNX input per tensor, named by its
path (``ids.0``), every dimension dynamic unless the model fixes it; the structure is recorded in the
metadata (kind ``"tree"``, :mod:`.input_spec`) and their tables keep ``nn.EmbeddingBag``'s contract
(1-D ids + offsets with ``include_last_offset``, 2-D ids, ``per_sample_weights``, ``padding_idx``;
sum / mean / max), pooled by a scatter into the bags, so the number of ids is dynamic too.

Example:
    >>> from lightning_recsys.quant import export_onnx, load  # doctest: +SKIP
    >>> export_onnx(model, "model.onnx", example_batch)       # doctest: +SKIP
    >>> logits = load("model.onnx")(batch)                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...data.batch import RecsysBatch, SparseFeature
from ..core.linear import Int8Linear
from .example_rows import infer_roles, other_rows, recsys_rows, select_rows
from .graph_rewrite import quantize_before_concat
from .input_spec import (Call, CallFromFlat, bind_example, dynamic_shapes_for, flatten_call, graph_inputs, rebuild_call,
                         resolve_call, tree_feeds)  # fmt: skip
from .lowering import StackedColumn, lower_tables
from .onnx_translations import onnx_translations as _onnx_translations

__all__ = ["export_onnx", "flatten_batch", "layout_feeds", "METADATA_KEY", "SEP", "FlatRecsysModel", "grow_batch"]

METADATA_KEY = "lightning_recsys"
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


class FlatRecsysModel(nn.Module):
    """Takes the flattened tensors and calls the model with a RecsysBatch of padded features."""

    def __init__(self, model: nn.Module, features: list[str], weighted: list[str], stacked: list[str] = ()) -> None:
        super().__init__()
        self.model, self.features, self.weighted, self.stacked = model, features, weighted, list(stacked)

    def forward(self, dense: Tensor, *flat: Tensor) -> Tensor:
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


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress, warns, and logs that torchvision's ops are not registered (and
    torch.export logs every failed guard at ERROR level before raising)."""
    logs = {name: logging.getLogger(name) for name in ("torch.onnx._internal.exporter._registration", "torch._guards",
                                                      "onnx_ir._convenience")}
    levels = {name: log.level for name, log in logs.items()}
    for log in logs.values():
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, log in logs.items():
            log.setLevel(levels[name])


def _root_cause(e: BaseException) -> BaseException:
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return e


def _export_program(wrapper: nn.Module, args: tuple, names: list[str], dynamic_shapes: tuple, what: str = "the model") -> Any:
    with _quiet_exporter():
        try:
            return torch.onnx.export(
                wrapper, args, dynamo=True, input_names=names, output_names=["logits"], dynamic_shapes=dynamic_shapes,
                custom_translation_table=_onnx_translations(), verbose=False, optimize=True,
            )  # fmt: skip
        except Exception as e:  # torch.onnx wraps the cause (an unsupported op, our own ValueError, ...) in its report
            cause = _root_cause(e)
            msg = f"torch.onnx.export could not export {what}: {type(cause).__name__}: {str(cause).strip()[:1500]}"
            if type(cause).__name__ == "DispatchError":  # an op without ONNX translation
                msg += (" (a model's own pooling exports when written with index_add / scatter_add / scatter_reduce / "
                        "index_put(accumulate=True), segment ids from searchsorted / bucketize / repeat_interleave, or "
                        "sums over a padded dim; or use nn.EmbeddingBag)")  # fmt: skip
            raise (type(cause)(msg) if isinstance(cause, (ValueError, TypeError)) else RuntimeError(msg)) from e


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_batch: Any,
    *,
    verify: bool = True,
    verify_batches: Sequence[Any] = (),
    single_hot: str | list[str] = "auto",
    atol: float = 1e-3,
    rtol: float = 1e-3,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (float or ``quantize_``-d) to ``path``; returns the metadata written with it
    (input layout, tasks, parity check). Refuses to overwrite an existing file.

    ``example_batch``: a :class:`~lightning_recsys.data.RecsysBatch`, or the model's own inputs: a
    tuple / list of its positional arguments (unless ``forward`` takes exactly one: then it is that
    argument), a dict (its one argument, or its keyword arguments), a tensor; any of them nested
    (:mod:`.input_spec`). ``verify_batches``: more batches in the same form, checked against ONNX
    Runtime like the example (give some of other sizes and bag lengths when the automatic check on
    another size is skipped, see the module doc).

    ``single_hot`` (RecsysBatch only): features fed as one id per bag (``[B]`` ids, -1 = empty bag, no
    reduction in the graph); ``"auto"`` picks those whose bags in ``example_batch`` all hold exactly
    one id. Such a feature refuses multi-id bags at inference (clear error); pass ``[]`` to keep all
    multi-hot.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; export_onnx never overwrites a file")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model.eval()
    meta: dict[str, Any] = {"format": "onnx", "version": 1}
    if isinstance(example_batch, RecsysBatch):
        features = list(example_batch.sparse)
        weighted = [n for n, f in example_batch.sparse.items() if f.weights is not None]
        if single_hot == "auto":
            single_hot = [n for n, f in example_batch.sparse.items() if bool((f.lengths == 1).all())]
        single_hot = list(single_hot)
        stacked = [n for n in single_hot if n not in weighted]
        example = grow_batch(example_batch)
        inputs = flatten_batch(example, features, weighted, min_len=2, single_hot=single_hot, stacked=stacked)
        names = list(inputs)
        args = tuple(torch.from_numpy(v) for v in inputs.values())
        batch_dim = torch.export.Dim("batch")
        shapes: list[dict] = [{0: batch_dim}]
        for n in names[1:]:  # every bag length is dynamic; a feature's weights share its ids' length
            if n == STACKED_INPUT or n.split(SEP)[0] in single_hot:
                shapes.append({0: batch_dim})
                continue
            length = torch.export.Dim(f"len_{len(shapes)}") if n.endswith("ids") else shapes[-1][1]
            shapes.append({0: batch_dim, 1: length})
        wrapper: nn.Module = FlatRecsysModel(lower_tables(model).eval(), features, weighted, stacked)
        meta["inputs"] = {"kind": "recsys", "features": features, "weighted": weighted, "single_hot": single_hot,
                          "stacked": stacked, "num_dense": int(example.dense.shape[1])}  # fmt: skip
        dyn: tuple = (shapes[0], tuple(shapes[1:]))
    else:
        if single_hot != "auto":
            raise ValueError("single_hot applies to RecsysBatch examples only; a model taking its own inputs gets the ids "
                             f"it is given, got single_hot={single_hot!r}")  # fmt: skip
        call = Call(*bind_example(model, example_batch))
        spec, names, leaves = flatten_call(model, call.args, call.kwargs)
        if not leaves:
            raise TypeError("example_batch holds no tensor: the exported graph would have no input")
        args = tuple(t.detach() for t in leaves)
        wrapper = CallFromFlat(lower_tables(model, native=True).eval(), spec, (call.args, call.kwargs))
        meta["inputs"] = {"kind": "tree", "spec": spec, "names": names}
        dyn = dynamic_shapes_for(leaves)
    program = _export_program(wrapper, args, names, dyn, type(model).__name__)
    import onnx

    proto = program.model_proto
    quantize_before_concat(proto)
    if meta["inputs"]["kind"] == "tree":
        meta["inputs"]["tensors"] = graph_inputs(proto, program, names)
    onnx.checker.check_model(proto, full_check=True)
    meta.update(extra_metadata or {})
    meta["parity"] = {"atol": atol, "rtol": rtol}
    if verify:
        import onnxruntime as ort

        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        meta["parity"].update(_verify(model, sess, example_batch, meta, atol, rtol))
        other, why = _other_size_batch(model, example_batch, meta)
        checks = [("a batch of another size made from the example", other)] if other is not None else []
        if other is None and not verify_batches:
            warnings.warn(f"export_onnx checked the graph on the example only, not on a batch of another size: {why}; "
                          "pass batches of other sizes as verify_batches=[...]", stacklevel=2)  # fmt: skip
        if other is None:
            meta["parity"]["other_size"] = {"skipped": why}
        checks += [(f"verify_batches[{i}]", b) for i, b in enumerate(verify_batches)]
        for i, (label, batch) in enumerate(checks):
            report = _verify_other(model, sess, batch, meta, atol, rtol, label)
            if i == 0 and other is not None:
                meta["parity"]["other_size"] = report
            else:
                meta["parity"].setdefault("verify_batches", []).append(report)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    # written under a temporary name and renamed once complete: never a half-written or unverified file
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _other_size_batch(model: nn.Module, example: Any, meta: dict) -> tuple[Any, str | None]:
    """A batch of another size from ``example`` (:mod:`.example_rows`), or ``None`` and why not."""
    if isinstance(example, RecsysBatch):
        return recsys_rows(example, other_rows(example.batch_size)), None
    call = Call(*bind_example(model, example))
    spec, names, leaves = flatten_call(model, call.args, call.kwargs)
    read = {t["name"] for t in meta["inputs"]["tensors"]}
    found = infer_roles(model, call.args, call.kwargs, names, leaves, [n in read for n in names])
    if isinstance(found, str):
        return None, found
    b, roles = found
    args, kwargs = rebuild_call(spec, select_rows(leaves, roles, other_rows(b)), (call.args, call.kwargs))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as e:  # the roles were guessed wrong: the model refuses the batch
        return None, f"the model refuses the batch made of the example's rows {other_rows(b)[:4]}... ({type(e).__name__}: {e})"
    return Call(args, kwargs), None


def _verify_other(model: nn.Module, sess: Any, batch: Any, meta: dict, atol: float, rtol: float, label: str) -> dict:
    """:func:`_verify` on another batch; ONNX Runtime failing on it (a size fixed at export) names the batch."""
    try:
        return _verify(model, sess, batch, meta, atol, rtol)
    except ValueError as e:
        raise ValueError(f"the exported graph cannot take {label}: {e}") from e
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        raise RuntimeError(f"ONNX Runtime fails on {label} with the exported graph (a size of the example was fixed "
                           f"in the graph, or an op's dynamic shape is wrong): {str(e)[:1000]}") from e  # fmt: skip


def _verify(model: nn.Module, proto: Any, example: Any, meta: dict, atol: float, rtol: float) -> dict[str, Any]:
    """ONNX Runtime (``proto``: the model or a session of it) against the PyTorch model on ``example``
    (in ``example_batch``'s form); raises naming the cause when they disagree.

    Both run the same integer arithmetic, but float sums in another order can move an int8 activation
    that sits on a rounding tie (``x / scale`` within float error of ``k + 0.5``) by one code; the
    logit then moves by that code's weight, far beyond ``atol``. A row beyond ``atol + rtol |ref|`` is
    accepted only when the PyTorch model itself reaches ORT's value once its int8 layers' inputs are
    jittered by a relative ``1e-5`` (:func:`_tie_envelope`); any other difference is a lowering error.
    """
    import onnxruntime as ort

    sess = proto if isinstance(proto, ort.InferenceSession) else \
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])  # fmt: skip
    kwargs: dict = {}
    if meta["inputs"]["kind"] == "recsys":
        feeds = layout_feeds(example, meta["inputs"])
        args: tuple = (example,)
    elif meta["inputs"]["kind"] == "tree":
        args, kwargs, _ = resolve_call(meta["inputs"], (example,))
        feeds = tree_feeds(meta["inputs"], args, kwargs)
    else:
        args = (example,) if isinstance(example, Tensor) else tuple(example)
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(meta["inputs"]["names"], args)}
    with torch.no_grad():
        ref = _as_logits(model(*args, **kwargs))
    got = torch.from_numpy(sess.run(None, feeds)[0])
    if got.shape != ref.shape:
        raise RuntimeError(f"ONNX Runtime returns shape {tuple(got.shape)}, the PyTorch model {tuple(ref.shape)}: the "
                           "lowering changed the model's output (export the module whose forward returns the logits)")  # fmt: skip
    diff, bound = (got - ref).abs(), atol + rtol * ref.abs()
    off = (diff > bound).reshape(len(ref), -1).any(1) if ref.dim() else (diff > bound).reshape(1)
    worst = int(diff.reshape(len(ref), -1).amax(1).argmax()) if ref.dim() and ref.numel() else 0
    report: dict[str, Any] = {
        "rows": int(off.numel()), "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "rows_beyond_tol": int(off.sum()), "share_beyond_tol": float(off.float().mean()) if off.numel() else 0.0,
        "worst_row": worst, "rounding_ties": 0,
    }  # fmt: skip
    if not bool(off.any()):
        return report
    lo, hi, jittered = _tie_envelope(model, args, ref, kwargs)
    inside = (got >= lo - bound) & (got <= hi + bound)
    unexplained = ~inside.reshape(len(ref), -1).all(1) & off if ref.dim() else ~inside.reshape(1)
    report["rounding_ties"] = int((off & ~unexplained).sum())
    if bool(unexplained.any()):
        i = int(unexplained.nonzero()[0, 0])
        why = ("it is not an int8 rounding tie (the PyTorch model under input jitter of its int8 layers spans "
               f"[{float(lo.reshape(len(ref), -1)[i].min()):.6g}, {float(hi.reshape(len(ref), -1)[i].max()):.6g}] there)"
               if jittered else "the model has no int8 layer whose rounding could explain it")  # fmt: skip
        raise RuntimeError(
            f"ONNX Runtime output differs from the PyTorch model in {int(unexplained.sum())} of {len(ref)} rows "
            f"(row {i}: ORT {got.reshape(len(ref), -1)[i].tolist()} vs PyTorch {ref.reshape(len(ref), -1)[i].tolist()}, "
            f"tolerance atol={atol} + rtol={rtol}*|ref|); {why}. The exported graph computes something else than "
            "forward: a forward that does more with sparse features than pass values / offsets to its tables "
            "cannot be lowered, or an op is exported differently"
        )
    return report


def _as_logits(out: Any) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"export_onnx verifies models that return one logits tensor; forward returned {type(out).__name__}")
    return out.detach().float().cpu()


_TIE_JITTER = 1e-5  # relative; float32 sums in another order differ by ~1e-7 relative
_TIE_DRAWS = 16


@torch.no_grad()
def _tie_envelope(model: nn.Module, args: tuple, ref: Tensor, kwargs: dict | None = None) -> tuple[Tensor, Tensor, bool]:
    """Element-wise min / max of the model's output over runs whose int8 linears see inputs scaled by
    ``1 + u * _TIE_JITTER``: ``u = +1`` everywhere (every tie rounds up), ``u = -1`` (down), then
    ``_TIE_DRAWS`` draws of ``u`` uniform in [-1, 1] (mixed): the values reachable when activations on
    a rounding tie round the other way. ``False`` when the model has no int8 linear."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if not layers:
        return ref, ref, False
    gen = torch.Generator().manual_seed(0)
    sign: list[float | None] = [None]

    def jitter(_m: nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        u = torch.full(x.shape, sign[0]) if sign[0] is not None else 2 * torch.rand(x.shape, generator=gen) - 1
        return (x * (1 + _TIE_JITTER * u).to(x.dtype), *inputs[1:])

    handles = [m.register_forward_pre_hook(jitter) for m in layers]
    lo, hi = ref.clone(), ref.clone()
    try:
        for sign[0] in (1.0, -1.0, *[None] * _TIE_DRAWS):
            out = _as_logits(model(*args, **(kwargs or {})))
            lo, hi = torch.minimum(lo, out), torch.maximum(hi, out)
    finally:
        for h in handles:
            h.remove()
    return lo, hi, True
