"""``export_torch(model, path, example_batch)``: a self-contained ``torch.export`` program of a
(quantized) recsys model.

The file (``torch.export.save``'s ``.pt2`` archive) holds the graph, the quantized weights and the
input layout: :func:`lightning_recsys.quant.load` (or ``torch.export.load(path).module()``) scores
with it without the model's class or its checkpoint. The traced module is the one
:func:`~lightning_recsys.quant.export_onnx` traces (:mod:`.flat`: tables lowered to gathers of the
row-wise codes, int8 linears as in the model), so both artifacts compute the same numbers; the batch
dimension and every bag length are dynamic. With ``verify=True`` the loaded program must reproduce
the PyTorch model on the example, on a batch of another size and on ``verify_batches``
(:mod:`.parity`), or nothing is written.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from torch import nn
    >>> from lightning_recsys.quant import load
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> path = Path(tempfile.mkdtemp()) / "model.pt2"
    >>> meta = export_torch(model, path, torch.randn(8, 4))
    >>> load(path)(torch.randn(3, 4)).shape
    torch.Size([3, 1])
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .flat import prepare_call
from .parity import Runtime, verify_export

__all__ = ["PROGRAM_META", "export_torch", "program_runtime"]

#: name of the JSON metadata file inside the ``.pt2`` archive (``torch.export.save``'s ``extra_files``)
PROGRAM_META = "lightning_recsys.json"


def export_torch(
    model: nn.Module,
    path: str | Path,
    example_batch: Any,
    *,
    verify: bool = True,
    verify_batches: Sequence[Any] = (),
    single_hot: str | list[str] = "auto",
    atol: float = 1e-4,
    rtol: float = 1e-4,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (float or ``quantize_``-d) to the ``torch.export`` archive ``path``; returns
    the metadata stored in it (input layout, tasks, parity). Refuses to overwrite an existing file.
    ``example_batch``, ``verify_batches`` and ``single_hot`` take what
    :func:`~lightning_recsys.quant.export_onnx` takes."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; export_torch never overwrites a file")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model.eval()
    prepared = prepare_call(model, example_batch, single_hot)
    try:
        program = torch.export.export(prepared.module, prepared.args, dynamic_shapes=prepared.dynamic_shapes, strict=False)
    except Exception as e:
        raise RuntimeError(f"torch.export could not trace {type(model).__name__}: {type(e).__name__}: {str(e)[:1500]}") from e
    meta: dict[str, Any] = {"format": "torch_export", "version": 1, "inputs": prepared.inputs}
    if prepared.tasks:  # a dict output: one logits column per key (extra_metadata may name them otherwise)
        meta["tasks"] = prepared.tasks
    if prepared.inputs["kind"] == "tree":
        meta["inputs"]["tensors"] = _program_inputs(program, prepared.names)
    meta.update(extra_metadata or {})
    meta["parity"] = {"atol": atol, "rtol": rtol}
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}.pt2")  # torch.export wants the .pt2 suffix
    try:  # written under a temporary name, loaded back and verified, then renamed
        torch.export.save(program, str(tmp), extra_files={PROGRAM_META: json.dumps(meta)})
        if verify:
            loaded = torch.export.load(str(tmp)).module()
            meta["parity"].update(verify_export(model, program_runtime(loaded, meta), example_batch, meta, atol, rtol,
                                                verify_batches, caller="export_torch"))  # fmt: skip
            tmp.unlink()
            torch.export.save(program, str(tmp), extra_files={PROGRAM_META: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _program_inputs(program: torch.export.ExportedProgram, names: list[str]) -> list[dict]:
    """Name, dtype and shape (an int where the trace fixed the size, else the symbol) of each input."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = []
    for name, spec in zip(names, program.graph_signature.user_inputs):
        val = placeholders[spec].meta["val"]
        shape = [int(d) if isinstance(d, int) else str(d) for d in val.shape]
        out.append({"name": name, "dtype": str(val.dtype).removeprefix("torch."), "shape": shape})
    return out


def program_runtime(module: nn.Module, meta: dict[str, Any]) -> Runtime:
    """:class:`~.parity.Runtime` of a loaded program: the named inputs, in the traced order."""
    names = [t["name"] for t in meta["inputs"]["tensors"]] if meta["inputs"]["kind"] == "tree" else None

    def run(feeds: dict[str, np.ndarray]) -> torch.Tensor:
        order = names if names is not None else list(feeds)
        try:
            with torch.no_grad():
                return module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in order))
        except (AssertionError, RuntimeError) as e:
            if "Guard failed" not in str(e):
                raise
            raise ValueError(
                f"the torch.export program cannot take this batch ({e}): the trace fixed a size this batch does not "
                "have. A batch of one row for bags with include_last_offset is such a case (torch.export specialises "
                "one bag of batch + 1 offsets): score at least 2 rows, or export with format='onnx'"
            ) from e

    return Runtime("the torch.export program", run)
