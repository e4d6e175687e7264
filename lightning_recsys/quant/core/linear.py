"""Quantized ``nn.Linear``: int8 per-channel weights with dynamic or static (calibrated) uint8
activations, and fp16 weights.

The int8 arithmetic is ONNX Runtime's: activations ``xq = sat(round(x / sx) + zx)`` (uint8, round half
to even), weights ``wq = round(w / sw)`` (int8, symmetric, one scale per output channel), output
``((xq - zx) @ wq^T) * sx * sw + b``. Dynamic activations take ``sx, zx`` from each input's min/max
(``DynamicQuantizeLinear``); static ones from calibration (``quant.calibrate``). The two torch custom
ops below compute exactly that in eager mode and export to ``DynamicQuantizeLinear`` +
``MatMulInteger`` / ``QuantizeLinear`` + ``MatMulIntegerToFloat`` (see ``quant.export``).

Eager CPU calls run the same arithmetic on fbgemm's packed int8 GEMM through torch
(``quantized::linear_dynamic`` and ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``, the
weights prepacked once per weight version): a 512 x 512 layer at batch 512 on 2 threads runs about
3.4x faster than an fp32 ``nn.Linear`` and 10x faster than the float emulation. The codes, scales and
zero points are the same; fbgemm quantizes activations as ``round(x * (1 / sx)) + zx`` where ONNX
Runtime computes ``round(x / sx) + zx``, so a value within a float ulp of a rounding tie can land
one code apart (the export's parity check tolerates exactly such ties). fbgemm's kernels accumulate ``u8 x s8`` products exactly on CPUs with
AVX512-VNNI / AVX-VNNI; on other x86 CPUs (AVX2, AVX512 without VNNI) its ``vpmaddubsw`` path
saturates pairs of products at 32767 (``255 * 127 * 2`` does not fit), so :func:`fbgemm_is_exact`
probes the kernels once and, where they saturate, every call uses the float emulation. Traced code
(``torch.export``, ``torch.compile``, ONNX export) and non-CPU, non-float32 or 1-D inputs use the
custom ops.

Example:
    >>> import torch
    >>> from torch import nn
    >>> lin = nn.Linear(16, 4)
    >>> qlin = Int8Linear.from_float(lin, activation="dynamic")
    >>> x = torch.randn(8, 16)
    >>> bool((qlin(x) - lin(x)).abs().max() < 0.1)
    True
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..calibration.observers import Observer, make_observer
from .embedding import weight_sqnr_db

__all__ = [
    "Int8Linear", "FP16Linear", "quantize_activation_params", "int8_weight_per_channel", "fbgemm_pack_int8_weight",
    "fbgemm_is_exact",
]

# resolved overloads (``torch.ops`` attribute lookups cost microseconds per call)
_LINEAR_DYNAMIC = torch.ops.quantized.linear_dynamic.default
_LINEAR_STATIC = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32.default


def quantize_activation_params(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """uint8 asymmetric ``(scale, zero_point)`` for the range ``[lo, hi]`` widened to contain 0
    (ONNX ``DynamicQuantizeLinear``'s rule). ``zero_point`` is a float tensor holding an integer."""
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    return scale, zp


def _int8_matmul(x: Tensor, scale: Tensor, zp: Tensor, wq_t: Tensor, w_scale: Tensor, bias: Tensor) -> Tensor:
    xq = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    acc = (xq - zp) @ wq_t.to(x.dtype)  # exact integer sums (within float32's 24-bit mantissa)
    return acc * (scale * w_scale) + bias


@torch.library.custom_op("lrs_quant::int8_linear_dynamic", mutates_args=())
def int8_linear_dynamic(x: Tensor, wq_t: Tensor, w_scale: Tensor, bias: Tensor) -> Tensor:
    """``DynamicQuantizeLinear(x)`` -> ``MatMulInteger`` -> rescale + bias."""
    scale, zp = quantize_activation_params(x.amin(), x.amax())
    return _int8_matmul(x.float(), scale, zp, wq_t, w_scale, bias)


@int8_linear_dynamic.register_fake
def _(x: Tensor, wq_t: Tensor, w_scale: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], wq_t.shape[1]), dtype=torch.float32)


@torch.library.custom_op("lrs_quant::int8_linear_static", mutates_args=())
def int8_linear_static(x: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq_t: Tensor, w_scale: Tensor, bias: Tensor) -> Tensor:
    """``QuantizeLinear(x, x_scale, x_zero_point)`` -> integer matmul -> rescale + bias."""
    return _int8_matmul(x.float(), x_scale, x_zero_point, wq_t, w_scale, bias)


@int8_linear_static.register_fake
def _(x: Tensor, x_scale: Tensor, x_zero_point: Tensor, wq_t: Tensor, w_scale: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], wq_t.shape[1]), dtype=torch.float32)


def int8_weight_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per-output-channel quantization: ``(wq [out, in] int8, scale [out] float32)``."""
    w = weight.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("linear weight contains NaN or infinite values")
    scale = w.abs().amax(1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    wq = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return wq, scale


def fbgemm_pack_int8_weight(wq: Tensor, scale: Tensor, bias: Tensor | None):
    """fbgemm packed weights (``quantized::linear_prepack``) holding exactly the codes ``wq`` [out, in]
    int8 with per-output-channel ``scale`` [out] and zero point 0.

    Example:
        >>> import torch
        >>> wq, s = int8_weight_per_channel(torch.randn(4, 8))
        >>> packed = fbgemm_pack_int8_weight(wq, s, torch.zeros(4))
        >>> torch.ops.quantized.linear_dynamic(torch.randn(2, 8), packed, False).shape
        torch.Size([2, 4])
    """
    if wq.dtype != torch.int8 or wq.dim() != 2 or scale.shape != (wq.shape[0],):
        raise ValueError(f"wq must be int8 [out, in] and scale [out]; got {wq.dtype} {tuple(wq.shape)}, scale {tuple(scale.shape)}")
    zeros = torch.zeros(wq.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated as a user API; fbgemm's prepack reads them
        warnings.simplefilter("ignore", UserWarning)
        # |wq * scale / scale - wq| <= 127 * 2**-23: the per-channel quantization gives back exactly wq
        qw = torch.quantize_per_channel(wq.float() * scale.float()[:, None], scale.double(), zeros, 0, torch.qint8)
        if not torch.equal(qw.int_repr(), wq):
            raise RuntimeError("fbgemm_pack_int8_weight: re-quantizing the int8 weight did not give back its codes")
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float().contiguous())


@functools.cache
def fbgemm_is_exact() -> bool:
    """Whether fbgemm's int8 GEMMs (dynamic and static activations) compute ``u8 x s8`` sums exactly on
    this CPU: one probe per process, with activation codes of 255 against weights of 127, whose
    pairwise sums (64770) saturate the int16 ``vpmaddubsw`` path of CPUs without VNNI.

    Example:
        >>> isinstance(fbgemm_is_exact(), bool)
        True
    """
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    wq, scale = torch.full((8, 64), 127, dtype=torch.int8), torch.full((8,), 0.01)
    x = torch.full((4, 64), 2.55)  # dynamic range [0, 2.55] and static scale 0.01: codes of 255
    exact = x @ (wq.float() * scale[:, None]).t()
    try:
        packed = fbgemm_pack_int8_weight(wq, scale, None)
        outs = (_LINEAR_DYNAMIC(x, packed, False), _LINEAR_STATIC(x, 0.01, 0, packed))
    except RuntimeError:  # no fbgemm kernels for this CPU
        return False
    return all(torch.allclose(out, exact, rtol=1e-4, atol=1e-3) for out in outs)


class _PackedCache:
    """Holds packed weights outside the module's attributes (``torch.export`` would try to trace a
    script object found there)."""

    __slots__ = ("tensors", "versions", "packed", "x_qparams")

    def __init__(self) -> None:
        self.tensors: tuple[Tensor, ...] = ()  # the buffers the packed weights were built from, and their versions
        self.versions: tuple[int, ...] = ()
        self.packed: Any = None
        self.x_qparams: tuple[float, int] = (1.0, 0)  # the static activation scale and zero point as Python numbers


class Int8Linear(nn.Module):
    """int8 ``nn.Linear`` replacement with the same ``forward(x)``.

    Args:
        in_features, out_features: as ``nn.Linear``.
        activation: ``"dynamic"`` (per-batch activation range) or ``"static"`` (calibrated range;
            run :func:`lightning_recsys.quant.calibrate` before inference).
        observer: for static activations: ``"minmax"``, ``"percentile"``, ``"mse"`` or ``"entropy"``.
        percentile, bins: observer options.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: Literal["dynamic", "static"] = "dynamic",
        observer: str = "minmax",
        percentile: float = 99.99,
        bins: int = 2048,
    ) -> None:
        super().__init__()
        if activation not in ("dynamic", "static"):
            raise ValueError(f"activation must be 'dynamic' or 'static', got {activation!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation = activation
        self.precision = "int8"
        self.observer_name = observer
        self._observer_kwargs = {"percentile": percentile, "bins": bins}
        self.observer: Observer | None = None
        if activation == "static":
            self.reset_observer()
        self.calibrating = False
        self.sqnr_db: float | None = None
        self.register_buffer("wq_t", torch.zeros(in_features, out_features, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features))
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("x_zero_point", torch.zeros(()))
        self.register_buffer("calibrated", torch.tensor(activation == "dynamic"))
        self._calibrated = activation == "dynamic"  # python mirror of the buffer (no data-dependent branch)
        self._fbgemm = _PackedCache()  # fbgemm packed weights for eager CPU calls (rebuilt when the buffers change)

    @classmethod
    def from_float(cls, module: nn.Linear, activation: str = "dynamic", observer: str = "minmax",
                   percentile: float = 99.99, bins: int = 2048) -> Int8Linear:  # fmt: skip
        q = cls(module.in_features, module.out_features, activation, observer, percentile, bins)
        wq, scale = int8_weight_per_channel(module.weight)
        q.wq_t.copy_(wq.t())
        q.w_scale.copy_(scale)
        if module.bias is not None:
            q.bias.copy_(module.bias.detach().float())
        q.sqnr_db = weight_sqnr_db(module.weight, q.dequantized_weight())
        return q

    def dequantized_weight(self) -> Tensor:
        """Float32 ``[out, in]`` weight the module computes with."""
        return self.wq_t.t().float() * self.w_scale[:, None]

    def reset_observer(self) -> None:
        """Start a fresh observer (recalibration forgets earlier data)."""
        self.observer = make_observer(self.observer_name, **self._observer_kwargs)

    def calibrated_range(self) -> tuple[float, float]:
        """The float range the static uint8 activation grid covers (for out-of-range monitoring)."""
        scale, zp = float(self.x_scale), float(self.x_zero_point)
        return (0.0 - zp) * scale, (255.0 - zp) * scale

    def set_activation_range(self, lo: float, hi: float) -> None:
        """Fix the static activation range (``calibrate`` calls this from the observer's choice)."""
        scale, zp = quantize_activation_params(torch.tensor(float(lo)), torch.tensor(float(hi)))
        self.x_scale.copy_(scale)
        self.x_zero_point.copy_(zp)
        self.calibrated.fill_(True)
        self._calibrated = True
        self._forget_packed()

    def _forget_packed(self) -> None:
        self._fbgemm = _PackedCache()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "calibrated" in state_dict:
            self._calibrated = bool(state_dict[prefix + "calibrated"])
        self._forget_packed()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # the packed weights are a cache: copies and pickles rebuild them
        state["_fbgemm"] = _PackedCache()
        return state

    def _fbgemm_weight(self, x: Tensor) -> Any:
        """fbgemm packed weights when ``x`` can run on them (eager, CPU, float32, at least 2-D), else ``None``."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() < 2 or torch.compiler.is_compiling():
            return None
        if not fbgemm_is_exact():
            return None
        cache = self._fbgemm
        bufs = self._buffers  # (plain dict reads: Module.__getattr__ costs about a microsecond per buffer)
        tensors = (bufs["wq_t"], bufs["w_scale"], bufs["bias"], bufs["x_scale"], bufs["x_zero_point"])
        # inference tensors (a model quantized under torch.inference_mode) have no version counter: their
        # changes through this module's own setters clear the cache (_forget_packed)
        versions = tuple(-1 if t.is_inference() else t._version for t in tensors)
        if versions != cache.versions or any(t is not c for t, c in zip(tensors, cache.tensors)) or not cache.tensors:
            if torch.backends.quantized.engine not in ("x86", "fbgemm"):  # another engine's packing: emulate
                return None
            cache.packed = fbgemm_pack_int8_weight(self.wq_t.t(), self.w_scale, self.bias)
            cache.x_qparams = (float(self.x_scale), int(self.x_zero_point))
            cache.tensors, cache.versions = tensors, versions
        return cache.packed

    def _dynamic(self, x: Tensor) -> Tensor:
        packed = self._fbgemm_weight(x)
        if packed is None:
            return torch.ops.lrs_quant.int8_linear_dynamic(x, self.wq_t, self.w_scale, self.bias)
        return _LINEAR_DYNAMIC(x.contiguous(), packed, False)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation == "dynamic":
            return self._dynamic(x)
        if self.calibrating:
            if self.observer is None:
                self.reset_observer()
            self.observer.observe(x)
            return self._dynamic(x)
        if not self._calibrated:
            raise RuntimeError(
                "Int8Linear(activation='static') is not calibrated: run "
                "lightning_recsys.quant.calibrate(model, dataloader, num_batches) first"
            )
        packed = self._fbgemm_weight(x)
        if packed is None:
            return torch.ops.lrs_quant.int8_linear_static(x, self.x_scale, self.x_zero_point, self.wq_t, self.w_scale, self.bias)
        return _LINEAR_STATIC(x.contiguous(), *self._fbgemm.x_qparams, packed)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={self.activation}"


class FP16Linear(nn.Module):
    """``nn.Linear`` with its weight stored in fp16 (computed in float32)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.precision = "fp16"
        self.sqnr_db: float | None = None
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features))

    @classmethod
    def from_float(cls, module: nn.Linear) -> FP16Linear:
        w = module.weight.detach().float()
        if w.numel() and float(w.abs().max()) > 65504.0:
            raise ValueError(f"linear weight exceeds the fp16 range (max |w| = {float(w.abs().max()):g})")
        q = cls(module.in_features, module.out_features)
        q.weight.copy_(w.half())
        if module.bias is not None:
            q.bias.copy_(module.bias.detach().float())
        q.sqnr_db = weight_sqnr_db(w, q.weight.float())
        return q

    def dequantized_weight(self) -> Tensor:
        return self.weight.float()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, precision=fp16"
