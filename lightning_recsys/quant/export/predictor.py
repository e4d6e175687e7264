"""``load(path)``: a predictor for a quantized artifact that takes the batches the model takes.

``path`` is an ``.onnx`` file written by :func:`export_onnx`, a ``.pt2`` file written by
:func:`export_torch`, or an artifact directory written by :func:`quantize_checkpoint` (``model.onnx``
or ``model.pt2`` + ``meta.json``), or a TensorRT artifact
directory written by :func:`~lightning_recsys.quant.export.tensorrt.export_tensorrt` (needs CUDA). The predictor returns
logits ``[B, num_tasks]`` as a float32 tensor (``predict_proba`` applies the sigmoid).

An ONNX or torch.export predictor takes a batch in the form the export took it: a :class:`RecsysBatch`, or the model's
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
from torch import Tensor

from .input_spec import tree_feeds
from .flat import layout_feeds
from .onnx import METADATA_KEY
from .torch_program import PROGRAM_META, program_runtime

__all__ = ["batch_feeds", "load", "OnnxPredictor", "ProgramPredictor"]


def batch_feeds(inputs: dict[str, Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    """The named input arrays of an export whose input layout is ``inputs``, for a call in any of the
    forms the module doc lists."""
    if inputs["kind"] == "tree":
        return tree_feeds(inputs, args, kwargs)
    if len(args) != 1 or kwargs:
        kind = "RecsysBatch" if inputs["kind"] == "recsys" else "tuple of tensors"
        raise TypeError(f"this model was exported from a {kind} example; call the predictor with one batch, got "
                        f"{len(args)} arguments and keywords {sorted(kwargs)}")  # fmt: skip
    (batch,) = args
    if inputs["kind"] == "recsys":
        return layout_feeds(batch, inputs)
    tensors = (batch,) if isinstance(batch, Tensor) else tuple(batch)  # ONNX files written before the "tree" kind
    return {n: t.detach().cpu().numpy() for n, t in zip(inputs["names"], tensors)}


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
        return batch_feeds(self.meta["inputs"], args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return torch.from_numpy(self.session.run(None, self.feeds(*args, **kwargs))[0])

    def predict_proba(self, *args: Any, **kwargs: Any) -> Tensor:
        return torch.sigmoid(self(*args, **kwargs))


class ProgramPredictor:
    """A ``torch.export`` program written by :func:`~.torch_program.export_torch`; called with the
    batches the model takes, like :class:`OnnxPredictor`."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        extra = {PROGRAM_META: ""}
        try:
            program = torch.export.load(str(self.path), extra_files=extra)
        except Exception as e:
            raise ValueError(f"{self.path} is not a torch.export archive ({type(e).__name__}: {str(e)[:300]})") from e
        if not extra[PROGRAM_META]:
            raise ValueError(f"{self.path} has no {PROGRAM_META!r} metadata: it was not written by quant.export_torch")
        self.meta: dict[str, Any] = json.loads(extra[PROGRAM_META])
        self.module = program.module()
        self.tasks = self.meta.get("tasks")
        self._run = program_runtime(self.module, self.meta).run
        if threads is not None:
            torch.set_num_threads(int(threads))

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._run(batch_feeds(self.meta["inputs"], args, kwargs)).float()

    def predict_proba(self, *args: Any, **kwargs: Any) -> Tensor:
        return torch.sigmoid(self(*args, **kwargs))


def load(path: str | Path, threads: int | None = None) -> Any:
    """Open an ONNX file or an artifact directory (see module docstring)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        return OnnxPredictor(path, threads)
    if path.is_file() and path.suffix == ".pt2":
        return ProgramPredictor(path, threads)
    if not path.is_dir():
        raise FileNotFoundError(f"no quantized artifact at {path} (expected a .onnx or .pt2 file or an artifact directory)")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} has no meta.json: not an artifact written by quantize_checkpoint")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") == "onnx":
        return OnnxPredictor(path / "model.onnx", threads)
    if meta.get("format") == "torch":
        if not (path / "model.pt2").is_file():
            raise FileNotFoundError(f"{path} has no model.pt2: a format='torch' artifact from an earlier version "
                                    "(a state dict); run lrs quantize --format torch again to get a self-contained one")
        return ProgramPredictor(path / "model.pt2", threads)
    if meta.get("format") == "tensorrt":
        from .tensorrt import TensorRTPredictor

        return TensorRTPredictor(path)
    raise ValueError(f"{meta_path}: unknown artifact format {meta.get('format')!r}; expected 'onnx', 'torch' or 'tensorrt'")
