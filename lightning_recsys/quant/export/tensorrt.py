"""Torch-TensorRT backend (optional ``tensorrt`` extra, CUDA only): a recsys model as a TensorRT program.

Two steps, so everything before the GPU is needed runs (and is tested) on CPU:

1. :func:`prepare_tensorrt_program` (CPU or CUDA): embedding bags lowered to ``embedding`` + ``sum``
   as for ONNX (:mod:`.lowering`; TensorRT's ``embedding_bag`` converter is weak), the batch flattened
   into tensors (:func:`~lightning_recsys.quant.export.flatten_batch` layout), padding ids (``-1``)
   pointed at each table's zero row explicitly (TensorRT's Gather does not wrap negative indices like
   ONNX's), precision prepared the way Torch-TensorRT >= 2.13 expects on its dynamo path, where the
   engine is strongly typed and ``enabled_precisions`` is ignored:

   * ``"fp32"``: as is;
   * ``"fp16"``: weights, embedding tables and float inputs cast with ``.half()`` (id inputs stay
     int64, row-wise int8/int4 tables keep float32 scales and are cast after dequantization), the
     output cast back to float32;
   * ``"int8"``: NVIDIA ModelOpt fake quantization (``mtq.quantize(..., mtq.INT8_DEFAULT_CFG,
     forward_loop=...)`` on ``calibration_batches``: per-channel int8 weights, per-tensor int8
     activations of every ``nn.Linear``), exported under ``export_torch_mode()`` so the graph holds
     the ``tensorrt::quantize_op`` Q/DQ nodes that Torch-TensorRT turns into int8 kernels. Needs
     ``pip install nvidia-modelopt``; embedding tables stay in their own precision.

   Then ``torch.export`` with a dynamic batch dimension (and dynamic bag lengths) in
   ``[1, max_batch]`` / ``[1, max_bag_len]``; the result holds the ``ExportedProgram``, example
   inputs and the metadata a loader needs (input names, dtypes, dynamic dims, min/opt/max shapes).
2. :func:`export_tensorrt` (CUDA + ``torch_tensorrt``): the same preparation on ``cuda``, then
   ``torch_tensorrt.dynamo.compile(program, arg_inputs=[torch_tensorrt.Input(min_shape, opt_shape,
   max_shape, dtype)...])`` and ``torch_tensorrt.save(..., output_format=...)``; writes
   ``<out_dir>/model.ep`` (or ``model.ts`` / ``model.pt2``) and ``<out_dir>/meta.json``.

:func:`tensorrt_inputs` flattens a batch (a :class:`~lightning_recsys.data.RecsysBatch` or the model's own
inputs) into the program's inputs from that metadata (:mod:`.tensorrt_layout`); :class:`TensorRTPredictor` loads an exported directory and feeds it.

Example:
    >>> from lightning_recsys.quant.export.tensorrt import export_tensorrt, prepare_tensorrt_program  # doctest: +SKIP
    >>> prepared = prepare_tensorrt_program(model, batch, "fp16")  # CPU is enough  # doctest: +SKIP
    >>> logits = prepared.program.module()(*tensorrt_inputs(batch, prepared.meta))  # doctest: +SKIP
    >>> meta = export_tensorrt(model, "artifacts/trt", batch, "fp16")  # needs CUDA  # doctest: +SKIP
    >>> logits = TensorRTPredictor("artifacts/trt")(batch)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..._validation import ConfigurationError, check_choice, check_int
from ..core.linear import Int8Linear
from ..core.precisions import TENSORRT_PRECISIONS, TensorRTPrecision
from .lowering import LoweredTable, lower_tables
from .tensorrt_layout import tensorrt_inputs, tensorrt_layout

__all__ = [
    "OUTPUT_FORMATS",
    "TensorRTProgram",
    "prepare_tensorrt_program",
    "export_tensorrt",
    "tensorrt_inputs",
    "import_torch_tensorrt",
    "TensorRTPredictor",
]

#: ``torch_tensorrt.save`` output formats and the artifact file each one writes
OUTPUT_FORMATS = {"exported_program": "model.ep", "torchscript": "model.ts", "aot_inductor": "model.pt2"}
MIN_TORCH_TENSORRT = (2, 9)  # as the tensorrt extra in pyproject.toml
_INSTALL_HINT = "pip install 'lightning-recsys[tensorrt]' (Torch-TensorRT; it needs an NVIDIA GPU with CUDA)"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:2])


def import_torch_tensorrt() -> Any:
    """``torch_tensorrt``, or a clear ImportError (package missing / too old) or RuntimeError (no CUDA)."""
    try:
        trt = importlib.import_module("torch_tensorrt")
    except (ImportError, OSError) as err:  # OSError: installed, but a TensorRT / CUDA library fails to load
        raise ImportError(f"the TensorRT backend needs the optional torch_tensorrt package: {_INSTALL_HINT} ({err})") from err
    version = getattr(trt, "__version__", "0")
    if _version_tuple(version) < MIN_TORCH_TENSORRT:
        need = ".".join(map(str, MIN_TORCH_TENSORRT))
        raise ImportError(f"torch_tensorrt {version} is too old for the dynamo export path; need >= {need}: {_INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"TensorRT needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}). prepare_tensorrt_program(..., device='cpu') runs every step before the engine build "
            "on CPU; compile on a machine with an NVIDIA GPU."
        )
    return trt


class _PaddingSafeTable(LoweredTable):
    """A :class:`LoweredTable` whose ``-1`` ids read its appended zero row explicitly and whose rows come
    out in ``compute_dtype`` (eager ``F.embedding`` and TensorRT's Gather reject negative indices)."""

    num_rows: int
    compute_dtype: torch.dtype

    def rows(self, ids: Tensor) -> Tensor:
        ids = torch.where(ids < 0, ids + self.num_rows, ids)
        return super().rows(ids).to(self.compute_dtype)


def _make_padding_safe(model: nn.Module, dtype: torch.dtype) -> None:
    for m in model.modules():
        if isinstance(m, LoweredTable):
            table = m.q if m.kind in ("int8", "int4") else m.weight
            m.__class__ = _PaddingSafeTable  # same buffers and fields, one overridden method
            m.num_rows, m.compute_dtype = int(table.shape[0]), dtype


def _to_half(model: nn.Module) -> None:
    """``.half()`` but row-wise int8/int4 tables keep float32 scale/bias (cast after dequantization)."""
    keep = {id(m): m.scale_bias for m in model.modules() if isinstance(m, LoweredTable) and hasattr(m, "scale_bias")}
    model.half()
    for m in model.modules():
        if id(m) in keep:
            m.scale_bias = keep[id(m)]


class _Float32Logits(nn.Module):
    """Cast the (fp16) output back to float32 for the caller."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.inner(*inputs).float()


@dataclass
class TensorRTProgram:
    """What :func:`prepare_tensorrt_program` returns: the program, example inputs, dynamic shapes as
    ``torch.export`` takes them, and the JSON metadata written beside the artifact."""

    program: torch.export.ExportedProgram
    example_inputs: tuple[Tensor, ...]
    dynamic_shapes: Any
    meta: dict[str, Any]

    def input_specs(self) -> list[dict[str, Any]]:
        """Per input: name, dtype and ``min`` / ``opt`` / ``max`` shapes (``torch_tensorrt.Input`` args)."""
        return [{"name": n, **self.meta["shapes"][n]} for n in self.meta["input_names"]]


def _validate(precision: str, max_batch: int, opt_batch: int | None, max_bag_len: int, calibration_batches: Any) -> int:
    check_choice("precision", precision, TENSORRT_PRECISIONS)
    for name, value in (("max_batch", max_batch), ("max_bag_len", max_bag_len)):
        check_int(name, value, low=2)
    opt = check_int("opt_batch", max_batch if opt_batch is None else opt_batch, low=1, high=max_batch)
    if precision == "int8" and calibration_batches is None:
        raise ConfigurationError("precision='int8' needs calibration_batches (an iterable of batches like example_batch)")
    if precision != "int8" and calibration_batches is not None:
        raise ConfigurationError(f"calibration_batches is only used with precision='int8', got precision={precision!r}")
    return opt


def _import_modelopt() -> tuple[Any, Any]:
    """``modelopt.torch.quantization`` and its ``export_torch_mode``, or a clear ImportError."""
    try:
        mtq = importlib.import_module("modelopt.torch.quantization")
        export_torch_mode = importlib.import_module("modelopt.torch.quantization.utils").export_torch_mode
    except ImportError as err:
        raise ImportError(
            "precision='int8' for TensorRT uses NVIDIA ModelOpt fake quantization (Q/DQ nodes TensorRT compiles to int8 "
            "kernels): pip install nvidia-modelopt"
        ) from err
    return mtq, export_torch_mode


def _modelopt_calibrate(mtq: Any, wrapper: nn.Module, calibration_batches: Iterable, meta: dict, device: torch.device) -> dict:
    """``mtq.quantize(wrapper, INT8_DEFAULT_CFG)`` calibrated on the batches; returns what it did."""
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("calibration_batches is empty; int8 calibration needs at least one batch")

    def forward_loop(m: nn.Module) -> None:
        for b in batches:
            m(*tensorrt_inputs(b, meta, device=device))

    with torch.no_grad():
        mtq.quantize(wrapper, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    version = getattr(importlib.import_module("modelopt"), "__version__", "unknown")
    return {"quantizer": "modelopt", "config": "INT8_DEFAULT_CFG", "calibration_batches": len(batches),
            "modelopt_version": str(version)}  # fmt: skip


def prepare_tensorrt_program(
    model: nn.Module,
    example_batch: Any,
    precision: TensorRTPrecision = "fp16",
    *,
    calibration_batches: Iterable | None = None,
    single_hot: str | list[str] = "auto",
    max_batch: int = 4096,
    opt_batch: int | None = None,
    max_bag_len: int = 64,
    device: str | torch.device = "cpu",
) -> TensorRTProgram:
    """Lower, flatten, set the precision and ``torch.export`` ``model`` for Torch-TensorRT (no CUDA needed
    with ``device="cpu"``). ``example_batch``: a RecsysBatch or the model's own inputs (tensors,
    tuples / lists / dicts of them, as :func:`~lightning_recsys.quant.export_onnx` takes them);
    ``single_hot`` as there. The TensorRT profile covers batch sizes ``[1, max_batch]`` (tuned for
    ``opt_batch``, default ``max_batch``) and bags of ``[1, max_bag_len]`` ids (:mod:`.tensorrt_layout`)."""
    opt = _validate(precision, max_batch, opt_batch, max_bag_len, calibration_batches)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    int8_linears = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    if int8_linears:
        raise ValueError(
            f"modules {int8_linears[:3]} are lightning_recsys Int8Linear (ONNX Runtime integer kernels), which TensorRT "
            "cannot compile; export the float model with precision='int8' (TensorRT's own int8 via ModelOpt) or keep "
            "linears float (quantize_ with linears=FP32Config())"
        )
    device = torch.device(device)
    if precision == "int8" and device.type != "cuda":
        raise ValueError(
            f"precision='int8' must be prepared on device='cuda', got {str(device)!r}: ModelOpt emits TensorRT's Q/DQ op "
            "(tensorrt::quantize_op) only for CUDA tensors (on CPU its data-dependent fake quantization cannot be exported)"
        )
    mtq, export_torch_mode = _import_modelopt() if precision == "int8" else (None, None)
    model.eval()
    layout = tensorrt_layout(model, example_batch, single_hot, max_batch, max_bag_len, opt)
    lowered = lower_tables(model, native=layout.kind == "tree").eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    _make_padding_safe(lowered, dtype)
    wrapper: nn.Module = layout.wrap(lowered)
    args = layout.args
    if precision == "fp16":
        _to_half(wrapper)
        args = tuple(a.half() if a.is_floating_point() else a for a in args)
        wrapper = _Float32Logits(wrapper)
    wrapper = wrapper.to(device).eval()
    args = tuple(a.to(device) for a in args)
    dynamic_shapes: Any = layout.dynamic_shapes
    if isinstance(wrapper, _Float32Logits) and layout.kind == "recsys":  # forward(*inputs)
        dynamic_shapes = ((dynamic_shapes[0], *dynamic_shapes[1]),)
    names = layout.meta["input_names"]
    for n, a in zip(names, args):  # the dtypes the program takes (fp16 inputs for an fp16 program)
        layout.meta["shapes"][n]["dtype"] = str(a.dtype).removeprefix("torch.")
    meta: dict[str, Any] = {"format": "tensorrt", "version": 1, "precision": precision, **layout.meta,
                            "output_names": ["logits"]}  # fmt: skip
    mode: Any = contextlib.nullcontext()
    if precision == "int8":
        feed = {"inputs": layout.meta["inputs"], "input_names": names,
                "dtypes": [str(a.dtype).removeprefix("torch.") for a in args]}  # fmt: skip
        meta["int8"] = _modelopt_calibrate(mtq, wrapper, calibration_batches, feed, device)
        mode = export_torch_mode()
    try:
        with torch.no_grad(), mode, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(wrapper, args, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as err:  # torch.export raises many types; name what we were doing
        raise RuntimeError(
            f"torch.export of the lowered model failed for precision={precision!r} ({type(err).__name__}: {err}); a model "
            "whose forward does more with sparse features than pass values/offsets/weights to its tables, or (fp16) "
            "creates float32 tensors itself, cannot be exported this way"
        ) from err
    # the dummy offsets the flat wrapper builds for SparseFeature (unused by lowered tables) stay in the graph
    # as dead aten.zeros on the CPU; drop them so a CUDA program holds no host-side op
    program.graph_module.graph.eliminate_dead_code()
    program.graph_module.recompile()
    meta["max_batch"], meta["max_bag_len"] = max_batch, max_bag_len
    return TensorRTProgram(program, args, dynamic_shapes, meta)


def export_tensorrt(
    model: nn.Module,
    out_dir: str | Path,
    example_batch: Any,
    precision: TensorRTPrecision = "fp16",
    *,
    calibration_batches: Iterable | None = None,
    single_hot: str | list[str] = "auto",
    max_batch: int = 4096,
    opt_batch: int | None = None,
    max_bag_len: int = 64,
    output_format: str = "exported_program",
    min_block_size: int = 1,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compile ``model`` with Torch-TensorRT into a new (or empty) ``out_dir``: the artifact
    (:data:`OUTPUT_FORMATS`) and ``meta.json``; returns the metadata. Needs CUDA and ``torch_tensorrt``."""
    check_choice("output_format", output_format, sorted(OUTPUT_FORMATS))
    check_int("min_block_size", min_block_size, low=1)
    _validate(precision, max_batch, opt_batch, max_bag_len, calibration_batches)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory; export_tensorrt never overwrites files")
    trt = import_torch_tensorrt()
    prepared = prepare_tensorrt_program(
        model, example_batch, precision, calibration_batches=calibration_batches, single_hot=single_hot,
        max_batch=max_batch, opt_batch=opt_batch, max_bag_len=max_bag_len, device="cuda",
    )  # fmt: skip
    specs = [trt.Input(min_shape=s["min"], opt_shape=s["opt"], max_shape=s["max"], dtype=getattr(torch, s["dtype"]))
             for s in prepared.input_specs()]  # fmt: skip
    options: dict[str, Any] = {"min_block_size": min_block_size}
    if "use_explicit_typing" in inspect.signature(trt.dynamo.compile).parameters:  # releases that still have the switch
        options["use_explicit_typing"] = True  # later ones are always strongly typed and lack it
    compiled = trt.dynamo.compile(prepared.program, arg_inputs=specs, **options)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / OUTPUT_FORMATS[output_format]
    # retrace=False keeps the compiled graph's symbolic shapes (one batch dim shared by all inputs); a retrace
    # would infer one independent dim per input from Input specs and violate that equality
    trt.save(compiled, str(artifact), output_format=output_format, arg_inputs=list(prepared.example_inputs), retrace=False)
    meta = {**prepared.meta, "artifact": artifact.name, "output_format": output_format,
            "torch_tensorrt_version": str(trt.__version__), "torch_version": torch.__version__,
            **(extra_metadata or {})}  # fmt: skip
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class TensorRTPredictor:
    """A TensorRT artifact written by :func:`export_tensorrt`, fed from its ``meta.json`` (needs CUDA).

    Example:
        >>> predictor = TensorRTPredictor("artifacts/trt")   # doctest: +SKIP
        >>> logits = predictor(batch)                          # doctest: +SKIP
    """

    def __init__(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        meta_path = out_dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{out_dir} has no meta.json: not an artifact written by export_tensorrt")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != "tensorrt" or self.meta.get("output_format") not in OUTPUT_FORMATS:
            raise ValueError(
                f"{meta_path}: format {self.meta.get('format')!r} / output_format {self.meta.get('output_format')!r} is not a "
                f"TensorRT artifact (expected format 'tensorrt', output_format one of {sorted(OUTPUT_FORMATS)})"
            )
        artifact = out_dir / str(self.meta.get("artifact"))
        if not artifact.is_file():
            raise FileNotFoundError(f"{artifact} named in {meta_path} does not exist")
        trt = import_torch_tensorrt()
        if self.meta["output_format"] == "aot_inductor":
            self.module = importlib.import_module("torch._inductor").aoti_load_package(str(artifact))
        else:
            loaded = trt.load(str(artifact))
            self.module = loaded.module() if isinstance(loaded, torch.export.ExportedProgram) else loaded
        self.tasks = self.meta.get("tasks")

    @torch.no_grad()
    def __call__(self, batch: Any) -> Tensor:
        return self.module(*tensorrt_inputs(batch, self.meta, device="cuda")).float().cpu()

    def predict_proba(self, batch: Any) -> Tensor:
        return torch.sigmoid(self(batch))
