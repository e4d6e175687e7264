"""The boundary codec interface: :class:`BoundaryCodec`, its option validation and the registry of families.

``BoundaryCodec(name, **options)`` is the factory: it builds the family registered under ``name``
(``"fp32"``, ``"fp16"``, ``"int8"``, ``"quant"``, ``"topk"``, ``"threshold"``). Every family encodes a
rank's block of the boundary tensor (``[rows, width]``) into a flat ``uint8`` payload and back, forward
(values) and backward (gradients), and says how many bytes that takes. Options are validated here, once,
for the codec and for callers that expose them under other names (``DCTStrategy``'s ``mp_*``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..._validation import ConfigurationError, check_choice, check_int, check_number
from .values import Levels

__all__ = ["BoundaryCodec", "CODECS", "Codec", "Rounding", "Scales", "VALUE_BITS", "check_codec_options", "codec_class"]

Codec = Literal["fp32", "fp16", "int8", "quant", "topk", "threshold"]
Rounding = Literal["stochastic", "nearest"]
Scales = Literal["group", "factored"]
CODECS: tuple[str, ...] = ("fp32", "fp16", "int8", "quant", "topk", "threshold")
VALUE_BITS: tuple[int, ...] = (32, 16, 8, 4, 3, 2, 1)
_FAMILIES: dict[str, type[BoundaryCodec]] = {}


def codec_class(name: str, prefix: str = "", owner: str = "") -> type[BoundaryCodec]:
    """The codec family registered under ``name`` (error messages name the option ``{prefix}codec``)."""
    if name not in _FAMILIES:
        raise ConfigurationError(f"{owner}{prefix}codec must be one of {list(CODECS)}, got {name!r}")
    return _FAMILIES[name]


def check_codec_options(name: str, keep_ratio: float = 0.05, group: int | None = None, bits: int | None = None,
                        grad_bits: int | None = None, grad_rounding: str = "nearest", levels: str | None = None,
                        scales: str | None = None, start_step: int = 0, refresh_interval: int = 100, sample_size: int = 8192,
                        seed: int = 0, prefix: str = "", owner: str = "") -> type[BoundaryCodec]:  # fmt: skip
    """Validate the options of codec ``name`` (the package's policy: ``TypeError`` for a wrong type,
    ``ConfigurationError`` for a bad value); return its family. ``prefix`` / ``owner``: how a caller names
    them in errors (``DCTStrategy``: ``"mp_"`` / ``"DCTStrategy: "``)."""
    cls = codec_class(name, prefix, owner)
    tag = owner + prefix
    check_number("keep_ratio", keep_ratio, low=0.0, high=1.0, low_open=True, owner=tag)
    check_int("group", group, low=1, optional=True, owner=tag)
    for arg, value in (("bits", bits), ("grad_bits", grad_bits)):
        if value is None:
            continue
        if not cls.quantizing:
            quantizing = tuple(n for n in CODECS if _FAMILIES[n].quantizing)
            raise ConfigurationError(f"{tag}{arg} applies to {prefix}codec in {quantizing}, not {name!r}")
        check_choice(arg, check_int(arg, value, owner=tag), VALUE_BITS, owner=tag)
    check_choice("levels", levels, (None, "uniform", "gaussian"), owner=tag)
    check_choice("scales", scales, (None, "group", "factored"), owner=tag)
    if (scales or cls.default_scales) not in cls.scale_layouts:
        raise ConfigurationError(f"{tag}scales={scales!r} applies to {prefix}codec='quant' only, not {name!r}")
    check_choice("grad_rounding", grad_rounding, ("nearest", "stochastic"), owner=tag)
    for arg, value, lo in (("start_step", start_step, 0), ("refresh_interval", refresh_interval, 1),
                           ("sample_size", sample_size, 1), ("seed", seed, 0)):  # fmt: skip
        check_int(arg, value, low=lo, owner=tag)
    return cls


class BoundaryCodec(ABC):
    """Codec of the embedding boundary; ``BoundaryCodec(name, ...)`` builds the family named ``name``.

    Args:
        name: one of :data:`CODECS` (default ``"fp32"``; a family's class needs none).
        keep_ratio: fraction of entries kept by ``"topk"`` / targeted by ``"threshold"``, in (0, 1].
        group: ``None``: select (and scale) over the whole row; ``G``: within each run of ``G`` entries.
        bits: precision of the values sent forward, one of :data:`VALUE_BITS` (``"quant"``: default 4;
            ``"topk"`` / ``"threshold"``: default 32); only for those three codecs.
        grad_bits: precision of the gradients sent backward (``"quant"``: default 2; 1 is a scale
            ``mean |g|`` times the sign; the sparse codecs: default ``bits``).
        grad_rounding: ``"nearest"`` (default) or ``"stochastic"`` (unbiased, but noisier: it cost AUC
            in benchmarks/dct.py) rounding of quantized gradients; forward values always go to nearest.
        levels: 2-4 bit values on ``"uniform"`` levels under the group's absmax (the sparse codecs'
            default) or on the ``"gaussian"`` Lloyd-Max levels times the group's RMS (``"quant"``'s
            default: lower error, e.g. 3x for 2 bits).
        scales: ``"quant"``'s scale layout: ``"factored"`` (its default: one int8 scale code per group
            column of the block, i.e. per table, times one per row, i.e. per sample: ``rows + groups``
            scale bytes, see :func:`~lightning_recsys.distributed.codecs.values.quantize_factored`) or
            ``"group"`` (one per group, i.e. per table vector of every sample: ``rows * groups`` bytes).
        start_step: training steps before this one send fp32 (warm-up).
        refresh_interval: ``"threshold"``: steps between threshold refreshes.
        sample_size: ``"threshold"``: entries sampled (per group) to estimate each threshold.
        seed: seed of that sampling and of stochastic rounding.

    The state (``state_dict``) is the training step counter and, for ``"threshold"``, the thresholds
    ``tau`` and the steps they were refreshed at.
    """

    name: ClassVar[str]
    #: the family quantizes values (takes ``bits`` / ``grad_bits``)
    quantizing: ClassVar[bool] = False
    #: the family sends a subset of the entries (``encode_forward`` returns the kept mask)
    sparse: ClassVar[bool] = False
    #: payload sizes depend on the data: the receivers learn them by an exchange first
    variable_size: ClassVar[bool] = False
    default_bits: ClassVar[int] = 32
    default_grad_bits: ClassVar[int | None] = None  # None: as ``bits``
    default_levels: ClassVar[Levels] = "uniform"
    default_scales: ClassVar[Scales] = "group"
    scale_layouts: ClassVar[tuple[str, ...]] = ("group",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _FAMILIES[cls.name] = cls

    def __new__(cls, name: Codec | None = None, *args: Any, **kwargs: Any) -> BoundaryCodec:
        family = codec_class(name or "fp32") if cls is BoundaryCodec else cls
        if name is not None and family.name != name:
            raise ValueError(f"{family.__name__} is the {family.name!r} codec, not {name!r}")
        return super().__new__(family)

    def __init__(self, name: Codec | None = None, keep_ratio: float = 0.05, group: int | None = None, bits: int | None = None,
                 grad_bits: int | None = None, grad_rounding: Rounding = "nearest", levels: Levels | None = None,
                 scales: Scales | None = None, start_step: int = 0, refresh_interval: int = 100, sample_size: int = 8192, seed: int = 0) -> None:  # fmt: skip
        check_codec_options(self.name, keep_ratio, group, bits, grad_bits, grad_rounding, levels, scales, start_step,
                            refresh_interval, sample_size, seed)  # fmt: skip
        self.keep_ratio, self.group = float(keep_ratio), group
        self.bits = bits if bits is not None else self.default_bits
        self.grad_bits = grad_bits if grad_bits is not None else self.default_grad_bits or self.bits
        self.grad_rounding = grad_rounding
        self.levels = levels if levels is not None else self.default_levels
        self.scales = scales if scales is not None else self.default_scales
        self.start_step, self.refresh_interval, self.sample_size, self.seed = start_step, refresh_interval, sample_size, seed
        self.step = 0
        self.tau: Tensor | None = None  # "threshold": one per group of this rank's block
        self.refresh_steps: list[int] = []

    def __repr__(self) -> str:
        return f"BoundaryCodec({self.name!r}{self._repr_options()})"

    def _repr_options(self) -> str:
        return ""

    # ------------------------------------------------------------------ layout
    def _groups(self, width: int) -> tuple[int, int]:
        """(groups per row, entries per group) of a row of ``width``."""
        if self.group is None or not width:
            return 1, width
        if width % self.group:
            raise ValueError(f"row width {width} is not a multiple of the codec's group {self.group}")
        return width // self.group, self.group

    # ------------------------------------------------------------------ sizes and coding
    @abstractmethod
    def forward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        """Payload bytes of ``rows`` rows of ``width`` (``kept``: entries kept, needed for ``"threshold"``)."""

    def backward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        """Gradient payload bytes (by default as forward)."""
        return self.forward_bytes(rows, width)

    @abstractmethod
    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x`` [N, W] -> (flat uint8 payload, kept mask [N, W] or None for dense codecs)."""

    @abstractmethod
    def decode_forward(self, b: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor | None]:
        """payload -> (dense [rows, width] float32, kept mask or None)."""

    def encode_backward(self, grad: Tensor, mask: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """Gradient [N, W] -> payload (by default as forward; ``generator``: stochastic rounding)."""
        return self.encode_forward(grad)[0]

    def decode_backward(self, b: Tensor, rows: int, width: int, mask: Tensor | None) -> Tensor:
        """Gradient payload -> dense [rows, width] float32."""
        return self.decode_forward(b, rows, width)[0]

    def generator(self, rank: int) -> torch.Generator | None:
        """Generator of this step's stochastic gradient rounding on ``rank`` (None: nearest rounding)."""
        if self.grad_bits >= 16 or self.grad_rounding == "nearest":
            return None
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) * 4099 + rank)

    # ------------------------------------------------------------------ training steps
    def refresh_due(self, step: int) -> bool:
        """Whether ``step`` re-estimates the codec's thresholds (only ``"threshold"`` has any)."""
        return False

    @property
    def ready(self) -> bool:
        """Past the warm-up (and able to encode): earlier steps send fp32."""
        return self.step >= self.start_step

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        tau = None if self.tau is None else self.tau.clone()
        return {"step": self.step, "tau": tau, "refresh_steps": list(self.refresh_steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.tau = None if state["tau"] is None else state["tau"].clone()
        self.refresh_steps = list(state["refresh_steps"])
