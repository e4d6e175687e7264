"""``load(path)``: a predictor for a quantized artifact that takes the batches the model takes.

``path`` is an ``.onnx`` file written by :func:`export_onnx`, or an artifact directory written by
:func:`quantize_checkpoint` (``model.onnx`` or ``model.pt`` + ``meta.json``), or a TensorRT artifact
directory written by :func:`~lightning_recsys.quant.export.tensorrt.export_tensorrt` (needs CUDA). The predictor returns
logits ``[B, num_tasks]`` as a float32 tensor (``predict_proba`` applies the sigmoid).

An ONNX predictor takes a batch in the form the export took it: a :class:`RecsysBatch`, or the model's
own inputs, either as the model would be called (``predictor(dense, ids, offsets)``,
``predictor(batch_dict)``, ``predictor(dense=..., ids=...)``) or as ``example_batch`` was given
(``predictor((dense, ids, offsets))``); tensors or numpy arrays, nested as at export (the structure is
in the file's metadata, see :mod:`.input_spec`). Another structure, a missing dict key, a dtype of
another kind or a size the graph fixed raise ``ValueError`` naming the input.

Example:
    >>> from lightning_recsys.quant import load   # doctest: +SKIP
    >>> predictor = load("artifacts/model")       # doctest: +SKIP
    >>> logits = predictor(batch)                 # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...data.batch import RecsysBatch
from .input_spec import tree_feeds
from .onnx import METADATA_KEY, layout_feeds

__all__ = ["load", "OnnxPredictor", "TorchPredictor"]


class OnnxPredictor:
    """ONNX Runtime session + the batch flattening recorded in the model's metadata."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        proto = onnx.load(str(self.path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(f"{self.path} has no {METADATA_KEY!r} metadata: it was not written by quant.export_onnx")
        self.meta: dict[str, Any] = json.loads(props[METADATA_KEY])
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.tasks = self.meta.get("tasks")

    def feeds(self, *args: Any, **kwargs: Any) -> dict:
        """The ONNX Runtime inputs for a batch (see the module doc for the forms it takes)."""
        inputs = self.meta["inputs"]
        if inputs["kind"] == "tree":
            return tree_feeds(inputs, args, kwargs)
        if len(args) != 1 or kwargs:
            kind = "RecsysBatch" if inputs["kind"] == "recsys" else "tuple of tensors"
            raise TypeError(f"this model was exported from a {kind} example; call the predictor with one batch, got "
                            f"{len(args)} arguments and keywords {sorted(kwargs)}")  # fmt: skip
        (batch,) = args
        if inputs["kind"] == "recsys":
            return layout_feeds(batch, inputs)
        tensors = (batch,) if isinstance(batch, Tensor) else tuple(batch)  # files written before the "tree" kind
        return {n: t.detach().cpu().numpy() for n, t in zip(inputs["names"], tensors)}

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return torch.from_numpy(self.session.run(None, self.feeds(*args, **kwargs))[0])

    def predict_proba(self, *args: Any, **kwargs: Any) -> Tensor:
        return torch.sigmoid(self(*args, **kwargs))


class TorchPredictor:
    """A quantized PyTorch model in eval mode."""

    def __init__(self, model: nn.Module, meta: dict[str, Any]) -> None:
        self.model = model.eval()
        self.meta = meta
        self.tasks = meta.get("tasks")

    @torch.no_grad()
    def __call__(self, batch: RecsysBatch) -> Tensor:
        return self.model(batch).float()

    def predict_proba(self, batch: RecsysBatch) -> Tensor:
        return torch.sigmoid(self(batch))


def load(path: str | Path, threads: int | None = None) -> Any:
    """Open an ONNX file or an artifact directory (see module docstring)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        return OnnxPredictor(path, threads)
    if not path.is_dir():
        raise FileNotFoundError(f"no quantized artifact at {path} (expected a .onnx file or an artifact directory)")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} has no meta.json: not an artifact written by quantize_checkpoint")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") == "onnx":
        return OnnxPredictor(path / "model.onnx", threads)
    if meta.get("format") == "torch":
        from ..pipeline import rebuild_quantized_module

        if threads is not None:
            torch.set_num_threads(int(threads))
        return TorchPredictor(rebuild_quantized_module(path, meta), meta)
    if meta.get("format") == "tensorrt":
        from .tensorrt import TensorRTPredictor

        return TensorRTPredictor(path)
    raise ValueError(f"{meta_path}: unknown artifact format {meta.get('format')!r}; expected 'onnx', 'torch' or 'tensorrt'")
