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

import torch
from torch import nn

from .flat import SEP, FlatRecsysModel, flatten_batch, grow_batch, layout_feeds, prepare_call
from .graph_rewrite import quantize_before_concat
from .input_spec import graph_inputs
from .onnx_translations import onnx_translations as _onnx_translations
from .parity import ort_runtime, verify_export

__all__ = ["export_onnx", "flatten_batch", "layout_feeds", "METADATA_KEY", "SEP", "FlatRecsysModel", "grow_batch"]

METADATA_KEY = "lightning_recsys"


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
    prepared = prepare_call(model, example_batch, single_hot)
    meta: dict[str, Any] = {"format": "onnx", "version": 1, "inputs": prepared.inputs}
    if prepared.tasks:  # a dict output: one logits column per key (extra_metadata may name them otherwise)
        meta["tasks"] = prepared.tasks
    program = _export_program(prepared.module, prepared.args, prepared.names, prepared.dynamic_shapes, type(model).__name__)
    import onnx

    proto = program.model_proto
    quantize_before_concat(proto)
    if meta["inputs"]["kind"] == "tree":
        meta["inputs"]["tensors"] = graph_inputs(proto, program, prepared.names)
    onnx.checker.check_model(proto, full_check=True)
    meta.update(extra_metadata or {})
    meta["parity"] = {"atol": atol, "rtol": rtol}
    if verify:
        meta["parity"].update(verify_export(model, ort_runtime(proto), example_batch, meta, atol, rtol, verify_batches,
                                            caller="export_onnx"))  # fmt: skip
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
