"""Quantization configs (dataclasses validated in ``__post_init__``, torchao style) and the YAML recipe.

One config per conversion; :func:`~lightning_recsys.quant.quantize_` looks its handler up in a
registry. :class:`RecipeConfig` combines a default per module kind with per-module overrides by
regular expression (``re.fullmatch`` on the module's qualified name), and is what a YAML file holds:

.. code-block:: yaml

    embeddings: {precision: int8}              # int8 | int4 | fp16 | fp32 (int8_grid: exact | anchored,
                                               # int4_clip: minmax | greedy)
    linears: {precision: int8, activation: static, observer: mse}   # int8 | fp16 | fp32
    overrides:                                 # first matching pattern wins
      ".*tables\\\\.C3": {precision: int4}
      ".*top_mlp\\\\.4": {precision: fp32}

Example:
    >>> cfg = recipe_from_dict({"embeddings": {"precision": "int4"}, "linears": {"precision": "fp16"}})
    >>> type(cfg.embeddings).__name__, cfg.embeddings.bits, type(cfg.linears).__name__
    ('RowwiseEmbeddingConfig', 4, 'FP16Config')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..._validation import ConfigurationError, check_choice, check_int, check_number
from ..calibration.observers import OBSERVERS
from .precisions import PRECISION_OPTIONS

__all__ = [
    "QuantConfig",
    "RowwiseEmbeddingConfig",
    "Int8LinearConfig",
    "FP16Config",
    "FP32Config",
    "RecipeConfig",
    "recipe_from_dict",
    "load_recipe",
    "config_to_dict",
]


class QuantConfig:
    """Base class of every quantization config (a registry key for ``quantize_``)."""


@dataclass
class RowwiseEmbeddingConfig(QuantConfig):
    """Row-wise int8 (``bits=8``) or int4 (``bits=4``) embedding tables: one scale and bias per row.

    ``clip="greedy"`` (int4 only) picks each row's clipping range by FBGEMM's greedy L2 search.
    ``grid="exact"`` (default) is FBGEMM's row range; ``grid="anchored"`` (int8 only) extends it to 0
    with an integer zero point, which spares ONNX Runtime the bias add (no reliable speed gain in
    benchmarks/quant.py) at up to 2-3x the error on rows of one sign
    (:func:`~lightning_recsys.quant.pack_rowwise`).

    Example:
        >>> RowwiseEmbeddingConfig(bits=8, grid="anchored").grid
        'anchored'
    """

    bits: Literal[8, 4] = 8
    clip: Literal["minmax", "greedy"] = "minmax"
    grid: Literal["exact", "anchored"] = "exact"

    def __post_init__(self) -> None:
        owner = "RowwiseEmbeddingConfig."
        check_choice("bits", self.bits, (8, 4), owner=owner)
        check_choice("clip", self.clip, ("minmax", "greedy"), owner=owner)
        check_choice("grid", self.grid, ("exact", "anchored"), owner=owner)
        if self.clip == "greedy" and self.bits != 4:
            raise ConfigurationError("RowwiseEmbeddingConfig.clip='greedy' needs bits=4")
        if self.grid == "anchored" and self.bits != 8:
            raise ConfigurationError("RowwiseEmbeddingConfig.grid='anchored' needs bits=8 (int4 rows keep FBGEMM's range)")


@dataclass
class Int8LinearConfig(QuantConfig):
    """int8 ``nn.Linear``: per-output-channel symmetric weights, uint8 activations.

    ``activation="dynamic"`` measures each input's range at run time; ``"static"`` uses the range an
    ``observer`` (``minmax``, ``percentile``, ``mse``, ``entropy``) chose during ``calibrate``.
    """

    activation: Literal["dynamic", "static"] = "dynamic"
    observer: Literal["minmax", "percentile", "mse", "entropy"] = "minmax"
    percentile: float = 99.99
    bins: int = 2048

    def __post_init__(self) -> None:
        owner = "Int8LinearConfig."
        check_choice("activation", self.activation, ("dynamic", "static"), owner=owner)
        check_choice("observer", self.observer, sorted(OBSERVERS), owner=owner)
        check_number("percentile", self.percentile, low=50.0, high=100.0, low_open=True, owner=owner)
        check_int("bins", self.bins, low=512, owner=owner)


@dataclass
class FP16Config(QuantConfig):
    """fp16 storage for embedding tables and linear weights (computed in float32)."""


@dataclass
class FP32Config(QuantConfig):
    """Keep the module in float32 (useful as an override)."""


_EMBEDDING_CONFIGS = (RowwiseEmbeddingConfig, FP16Config, FP32Config)
_LINEAR_CONFIGS = (Int8LinearConfig, FP16Config, FP32Config)


@dataclass
class RecipeConfig(QuantConfig):
    """Whole-model recipe: a config for embedding tables, one for linears, and overrides by name.

    ``overrides`` maps a regular expression (full match on the module's qualified name, e.g.
    ``"model\\.backbone\\.embeddings\\.tables\\.C3"`` or ``".*tables\\.C3"``) to a config (or the
    dict a YAML file holds, ``{"precision": "int4"}``); the first matching pattern wins. A pattern
    that matches no supported module is an error (typos do not pass silently).
    """

    embeddings: QuantConfig = field(default_factory=RowwiseEmbeddingConfig)
    linears: QuantConfig = field(default_factory=Int8LinearConfig)
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.embeddings, Mapping):
            self.embeddings = _from_precision_dict(self.embeddings, "embeddings", "embedding")
        if isinstance(self.linears, Mapping):
            self.linears = _from_precision_dict(self.linears, "linears", "linear")
        if not isinstance(self.embeddings, _EMBEDDING_CONFIGS):
            raise TypeError(f"RecipeConfig.embeddings must be one of {[c.__name__ for c in _EMBEDDING_CONFIGS]}, got {self.embeddings!r}")
        if not isinstance(self.linears, _LINEAR_CONFIGS):
            raise TypeError(f"RecipeConfig.linears must be one of {[c.__name__ for c in _LINEAR_CONFIGS]}, got {self.linears!r}")
        if not isinstance(self.overrides, Mapping):
            raise TypeError(f"RecipeConfig.overrides must be a mapping pattern -> config, got {type(self.overrides).__name__}")
        for pattern, cfg in self.overrides.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"RecipeConfig.overrides: invalid regular expression {pattern!r}: {err}") from None
            if isinstance(cfg, Mapping):
                _check_override_dict(cfg, pattern)
            elif not isinstance(cfg, QuantConfig) or isinstance(cfg, RecipeConfig):
                raise TypeError(f"RecipeConfig.overrides[{pattern!r}] must be a config or a dict, got {cfg!r}")

    def resolve(self, fqn: str, kind: Literal["embedding", "linear"]) -> tuple[QuantConfig, str | None]:
        """The config for module ``fqn`` of ``kind`` and the override pattern that chose it (or None)."""
        for pattern, cfg in self.overrides.items():
            if re.fullmatch(pattern, fqn):
                if isinstance(cfg, Mapping):
                    cfg = _from_precision_dict(cfg, f"overrides[{pattern!r}]", kind)
                return cfg, pattern
        return (self.embeddings if kind == "embedding" else self.linears), None


def _check_override_dict(d: Mapping[str, Any], pattern: str) -> None:
    where = f"overrides[{pattern!r}]"
    if "precision" not in d:
        raise ValueError(f"{where} needs a 'precision' key (int8, int4, fp16 or fp32), got keys {sorted(d)}")
    allowed = {"precision"}
    for kind in PRECISION_OPTIONS.values():
        allowed.update(kind.get(d["precision"], ()))
    if not any(d["precision"] in kind for kind in PRECISION_OPTIONS.values()):
        raise ValueError(f"{where}: unknown precision {d['precision']!r}; expected one of int8, int4, fp16, fp32")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed for precision {d['precision']!r}: {sorted(allowed)}")


def _from_precision_dict(d: Mapping[str, Any], where: str, kind: str) -> QuantConfig:
    """Turn ``{"precision": ..., options...}`` into the config for a module ``kind``."""
    options = PRECISION_OPTIONS[kind]
    precision = d.get("precision")
    if precision not in options:
        raise ValueError(f"{where}: precision for {kind} modules must be one of {sorted(options)}, got {precision!r}")
    unknown = sorted(set(d) - {"precision", *options[precision]})
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {unknown} for {kind} precision {precision!r}; "
            f"allowed: {sorted({'precision', *options[precision]})}"
        )
    rest = {k: v for k, v in d.items() if k != "precision"}
    if precision in ("int8", "int4") and kind == "embedding":
        if precision == "int8":
            return RowwiseEmbeddingConfig(bits=8, grid=rest.get("int8_grid", "exact"))
        return RowwiseEmbeddingConfig(bits=4, clip=rest.get("int4_clip", "minmax"))
    if precision == "int8":
        return Int8LinearConfig(**rest)
    return FP16Config() if precision == "fp16" else FP32Config()


_TOP_KEYS = ("embeddings", "linears", "overrides")


def recipe_from_dict(d: Mapping[str, Any] | None) -> RecipeConfig:
    """Build a :class:`RecipeConfig` from the dict a YAML file holds; unknown keys are errors."""
    if d is None:
        return RecipeConfig()
    if not isinstance(d, Mapping):
        raise TypeError(f"a quantization config must be a mapping with keys {list(_TOP_KEYS)}, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown quantization config keys {unknown}; allowed: {list(_TOP_KEYS)}")
    kwargs: dict[str, Any] = {}
    for key in ("embeddings", "linears"):
        if key in d:
            if not isinstance(d[key], Mapping):
                raise TypeError(f"{key} must be a mapping like {{precision: int8}}, got {d[key]!r}")
            kwargs[key] = dict(d[key])
    if d.get("overrides") is not None:
        kwargs["overrides"] = dict(d["overrides"])
    return RecipeConfig(**kwargs)


def load_recipe(path: str | Path) -> RecipeConfig:
    """Read a YAML (or JSON) recipe file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantization config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"quantization config {path} is not valid YAML: {err}") from None
    return recipe_from_dict(data)


def config_to_dict(cfg: QuantConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The YAML form of a config (``recipe_from_dict(config_to_dict(recipe))`` rebuilds a recipe)."""
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if isinstance(cfg, RecipeConfig):
        return {
            "embeddings": config_to_dict(cfg.embeddings),
            "linears": config_to_dict(cfg.linears),
            "overrides": {p: config_to_dict(c) for p, c in cfg.overrides.items()},
        }
    if isinstance(cfg, RowwiseEmbeddingConfig):
        out: dict[str, Any] = {"precision": f"int{cfg.bits}"}
        if cfg.bits == 4:
            out["int4_clip"] = cfg.clip
        elif cfg.grid != "exact":
            out["int8_grid"] = cfg.grid
        return out
    if isinstance(cfg, Int8LinearConfig):
        return {"precision": "int8", **asdict(cfg)}
    if isinstance(cfg, FP16Config):
        return {"precision": "fp16"}
    if isinstance(cfg, FP32Config):
        return {"precision": "fp32"}
    raise TypeError(f"no YAML form for config {cfg!r}")
