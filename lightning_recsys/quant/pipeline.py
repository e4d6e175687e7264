"""``quantize_checkpoint``: Lightning checkpoint -> calibrated, quantized artifact + JSON report.

The checkpoint is untrusted input: it is read with ``torch.load(weights_only=True)`` and never
written. Anything that needs full unpickling fails with an error naming the opt-in
(``unsafe_full_unpickle=True`` / ``--unsafe-full-unpickle``). The model is rebuilt as
``module_class(**checkpoint["hyper_parameters"])`` (the class LightningCLI recorded in the
hyperparameters, else ``module_class``, default :class:`RecsysModule`) and loaded strictly.

Calibration data (``train_dataloader()``) and held-out data (``val_dataloader()``): ``datamodule=``
(any ``LightningDataModule``), else the data module a LightningCLI run (``lrs fit``) saved in the
checkpoint, else (or with ``datamodule="synthetic"``) a :class:`SyntheticCTRDataModule` built from
the checkpoint's feature spec when it fits (features ``C1..Cn`` whose synthetic ids stay inside the tables).

Output directory (new, or empty, unless ``overwrite=True``): ``model.onnx`` or ``model.pt2`` (a
self-contained ``torch.export`` program: :func:`~lightning_recsys.quant.load` scores with it without
the model's class), ``meta.json``, ``report.json`` (per module precision / bytes / weight SQNR; model
logit SQNR, AUC and NE before and after on validation batches; the export's parity check), ``calibration.json`` and
``quant_config.yaml``. Everything is written into a temporary directory beside it and moved into
place only once complete and verified.

Accuracy budget (``budget_ne`` and/or ``budget_auc``): instead of applying ``config`` uniformly, a
per-module precision search (:func:`~lightning_recsys.quant.search_plan`) picks the smallest
plan meeting the budget: ``budget_ne`` is the largest *relative* NE increase as a FRACTION
(``0.001`` = 0.1 %; the CLI's ``--budget-ne`` takes the same fraction, or ``0.1%``), ``budget_auc`` the largest absolute AUC
drop. It searches on the first ``eval_batches`` validation batches and confirms on the next
``eval_batches`` (default: enough for :data:`EVAL_ROWS` rows each, at most half of the validation set
each). ``config`` then only sets the int8 linear options and the int4 clipping. The plan
report (``plan_report.json`` / ``.md`` / ``.png``) is written next to the artifact; when no plan meets
the budget the artifact is refused: :class:`BudgetNotMetError` is raised and the report files are the
only files written.

Example:
    >>> from lightning_recsys.quant import quantize_checkpoint, load      # doctest: +SKIP
    >>> report = quantize_checkpoint("last.ckpt", "artifacts/int8")      # doctest: +SKIP
    >>> predictor = load("artifacts/int8")                               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import itertools
import json
import math
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from .._validation import ConfigurationError, check_int
from ..data.batch import FeatureSpec, RecsysBatch
from ..data.contract import ModelContract
from .calibration.calibrate import calibrate
from .core.api import quantize_
from .core.config import (
    Int8LinearConfig,
    QuantConfig,
    RecipeConfig,
    RowwiseEmbeddingConfig,
    config_to_dict,
    load_recipe,
    recipe_from_dict,
)
from .core.precisions import LATENCY_TABLE_LADDER, TABLE_LADDER, TENSORRT_PRECISIONS
from .export.onnx import export_onnx
from .export.torch_program import export_torch
from .search.options import TrialOptions
from .search.plan_report import PLAN_REPORT_FILES, write_plan_report
from .search.report import eval_metrics, module_report, output_errors
from .search.search import Budget, BudgetNotMetError, check_size_ratio, search_plan


__all__ = [
    "quantize_checkpoint", "load_checkpoint", "ARTIFACT_FILES", "UNSAFE_FLAG",
    "BudgetNotMetError",
]  # fmt: skip

UNSAFE_FLAG = "--unsafe-full-unpickle"
ARTIFACT_FILES = ("model.onnx", "model.pt2", "meta.json", "report.json", "calibration.json", "quant_config.yaml", *PLAN_REPORT_FILES)


def load_checkpoint(path: str | Path, unsafe_full_unpickle: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint with torch's weights-only unpickler (read-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read checkpoint {path}: the file is corrupt or not a torch checkpoint "
                         "(torch.save and Lightning write a zip archive)")  # fmt: skip
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not unsafe_full_unpickle)
    except pickle.UnpicklingError as err:
        if unsafe_full_unpickle or "weights only" not in str(err).lower():
            raise ValueError(f"cannot unpickle checkpoint {path}: {str(err).splitlines()[0]}") from None
        raise ValueError(
            f"checkpoint {path} holds objects that torch's weights-only loader refuses ({str(err).splitlines()[0]}). "
            f"Full unpickling can run arbitrary code: only if you trust this file, pass {UNSAFE_FLAG} "
            "(Python: unsafe_full_unpickle=True)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"cannot read checkpoint {path}: the file is corrupt or not a torch checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint: expected a dict with a 'state_dict' entry")
    return ckpt


def _import_class(name: str) -> type:
    module, _, cls = name.rpartition(".")
    if not module:
        raise ValueError(f"module_class must be a dotted path like 'package.module.Class', got {name!r}")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import module_class {name!r}: {err}") from None


def _init_args(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyperparameters as init arguments: without the keys LightningCLI adds
    (``_instantiator``, ``_class_path``)."""
    return {k: v for k, v in hparams.items() if k not in ("_instantiator", "_class_path")}


def _build_module(ckpt: dict, path: Path, module_class: type | str | None) -> pl.LightningModule:
    hparams = ckpt.get("hyper_parameters")
    if module_class is None and isinstance(hparams, dict) and isinstance(hparams.get("_class_path"), str):
        module_class = hparams["_class_path"]  # written by LightningCLI in subclass mode
    cls = _import_class(module_class) if isinstance(module_class, str) else module_class
    if cls is None:
        from ..models.module import RecsysModule as cls  # noqa: N813
    hint = "" if module_class is not None else "; if it was trained with another LightningModule, name it with --module-class"
    if not isinstance(hparams, dict):
        raise ValueError(f"checkpoint {path} has no hyper_parameters to rebuild {cls.__name__} from{hint}")
    try:
        module = cls(**_init_args(hparams))
    except (TypeError, ValueError) as err:
        raise ValueError(f"incompatible checkpoint {path}: its hyperparameters do not build {cls.__name__} ({err}){hint}") from None
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"incompatible checkpoint {path}: weights do not match {cls.__name__} ({err}){hint}") from None
    return module.eval()


def _checkpoint_datamodule(ckpt: dict) -> pl.LightningDataModule | None:
    """The data module a LightningCLI run saved in the checkpoint (``datamodule_hyper_parameters``
    with its ``_class_path``), or ``None`` when the checkpoint does not name one."""
    hparams = ckpt.get("datamodule_hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("_class_path"), str):
        return None
    cls = _import_class(hparams["_class_path"])
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningDataModule)):
        raise ValueError(f"the checkpoint's data module {hparams['_class_path']!r} is not a LightningDataModule; pass --data")
    try:
        return cls(**_init_args(hparams))
    except (TypeError, ValueError) as err:
        raise ValueError(f"the checkpoint's data module {hparams['_class_path']} cannot be rebuilt ({err}); pass --data") from None


def _default_datamodule(spec: FeatureSpec | None, batch_size: int) -> pl.LightningDataModule:
    from ..data.synthetic import CRITEO_KAGGLE_CARDINALITIES, SyntheticCTRDataModule

    hint = "pass datamodule= (CLI: --data path/to/data.yaml with class_path/init_args)"
    if spec is None:
        raise ValueError(f"the checkpoint has no feature_spec to build calibration data from; {hint}")
    n = len(spec.cardinalities)
    names = [f"C{i + 1}" for i in range(n)]
    if list(spec.cardinalities) != names or n > len(CRITEO_KAGGLE_CARDINALITIES):
        raise ValueError(f"the checkpoint's features {list(spec.cardinalities)[:6]}... are not synthetic C1..Cn; {hint}")
    cap = max(spec.cardinalities.values())
    too_big = [f for f, c, k in zip(names, spec.cardinalities.values(), CRITEO_KAGGLE_CARDINALITIES) if min(k, cap) > c]
    if too_big:
        raise ValueError(f"synthetic ids would exceed the checkpoint's tables for features {too_big}; {hint}")
    rates = (0.25, 0.03) if len(spec.tasks) == 2 else tuple([0.25] * len(spec.tasks))
    return SyntheticCTRDataModule(
        num_train=64 * batch_size, num_val=max(8 * batch_size, 2 * EVAL_ROWS), num_test=batch_size, batch_size=batch_size,
        max_rows=cap, num_dense=spec.num_dense, num_sparse=n, tasks=spec.tasks, base_rates=rates,
    )  # fmt: skip


def _check_out_dir(out_dir: Path, ckpt_path: Path, overwrite: bool) -> None:
    """Refuse an output path we may not write into, before any work (nothing is created here)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output path {out_dir} exists and is not a directory")
    if ckpt_path.resolve().parent == out_dir.resolve():
        raise ValueError(f"output directory {out_dir} holds the checkpoint itself; choose a new directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty; choose a new directory or pass --overwrite")


@contextlib.contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A temporary directory beside ``out_dir`` to write the artifact into; when the block ends
    without error its files are moved into ``out_dir`` (:func:`_publish`), else it is deleted."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artifact gets a normal directory's mode
    try:
        yield stage
        _publish(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out_dir: Path) -> None:
    """Move a complete artifact into place: one rename when ``out_dir`` is new or empty; otherwise
    (``overwrite``) our own earlier files are removed and each new file is renamed in."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(stage, out_dir)
        return
    for name in ARTIFACT_FILES:  # replace only our own files, never anything else in the folder
        (out_dir / name).unlink(missing_ok=True)
    for f in stage.iterdir():
        os.replace(f, out_dir / f.name)


def _as_recipe(config: QuantConfig | dict | str | Path | None) -> QuantConfig:
    if config is None or isinstance(config, dict):
        return recipe_from_dict(config)
    if isinstance(config, (str, Path)):
        return load_recipe(config)
    if isinstance(config, QuantConfig):
        return config
    raise TypeError(f"config must be a QuantConfig, a dict or a YAML path, got {type(config).__name__}")


@torch.no_grad()
def _evaluate(ref: nn.Module, quant: nn.Module, loader, num_batches: int, contract: ModelContract) -> dict[str, Any]:
    """Logit errors of ``quant`` against ``ref`` and AUC / NE of the first task before and after."""
    outs_r, outs_q, labels = [], [], []
    for i, batch in enumerate(loader):
        if i >= num_batches:
            break
        outs_r.append(contract.logits(ref, batch))
        outs_q.append(contract.logits(quant, batch))
        with contextlib.suppress(ValueError, TypeError):  # no labels: the report gives the logit errors only
            labels.append(contract.labels(batch)[:, 0])
    if not outs_r:
        return {}
    r, q = torch.cat(outs_r), torch.cat(outs_q)
    out: dict[str, Any] = {"num_batches": len(outs_r), "num_rows": int(r.shape[0]), **output_errors(r, q)}
    if labels and len(labels) == len(outs_r):
        y = torch.cat(labels)
        fp, qm = eval_metrics(r[:, 0], y), eval_metrics(q[:, 0], y)
        out.update(task=contract.tasks[0], auc_fp32=fp["auc"], auc_quant=qm["auc"], ne_fp32=fp["ne"], ne_quant=qm["ne"],
                   ne_delta=qm["ne"] - fp["ne"], auc_delta=qm["auc"] - fp["auc"])  # fmt: skip
    return out


def _export_example(contract: ModelContract, batch: Any) -> Any:
    """What ``export_onnx`` takes for the model's call on ``batch``: the one argument, the positional
    arguments as a tuple, or the keyword arguments as a dict."""
    if contract.inputs is None:
        raise ValueError("a model called through forward_fn cannot be exported: export the module whose forward "
                         "computes the logits")  # fmt: skip
    args, kwargs = contract.inputs(batch)
    if kwargs:
        return kwargs
    return args[0] if len(args) == 1 else args


def quantize_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    config: QuantConfig | dict | str | Path | None = None,
    datamodule: pl.LightningDataModule | Literal["synthetic"] | None = None,
    calib_batches: int = 16,
    eval_batches: int | None = None,
    format: Literal["onnx", "torch", "tensorrt"] = "onnx",
    overwrite: bool = False,
    unsafe_full_unpickle: bool = False,
    module_class: type | str | None = None,
    batch_size: int = 256,
    budget_ne: float | None = None,
    budget_auc: float | None = None,
    budget_task: str | int = "mean",
    max_size_ratio: float | None = None,
    objective: Literal["size", "latency"] = "size",
    trt_precision: Literal["fp32", "fp16", "int8"] = "fp16",
) -> dict[str, Any]:
    """Quantize a Lightning checkpoint into a new artifact directory; returns the report dict.

    With ``budget_ne`` (relative NE increase, a fraction: 0.001 = 0.1 %) and/or ``budget_auc``
    (absolute AUC drop) the precisions are searched per module (``budget_task``: ``"mean"`` over the
    tasks, ``"worst"``, or a task name; ``max_size_ratio``: optional cap on the plan's bytes as a
    fraction of the float model's); raises :class:`BudgetNotMetError` when no plan meets the budget.
    ``objective="size"`` lets tables go down to int4; ``"latency"`` stops at int8 (int4 lookups cost
    more arithmetic than int8 ones in the exported graph, about 1.2x the int8 model's latency on CPU).
    """
    if objective not in ("size", "latency"):
        raise ValueError(f"objective must be 'size' or 'latency', got {objective!r}")
    if format not in ("onnx", "torch", "tensorrt"):
        raise ValueError(f"format must be 'onnx', 'torch' or 'tensorrt', got {format!r}")
    if format == "tensorrt":
        return _tensorrt_artifact(ckpt_path, out_dir, config, datamodule, calib_batches, overwrite, unsafe_full_unpickle,
                                  module_class, batch_size, budget_ne, budget_auc, trt_precision)  # fmt: skip
    check_int("calib_batches", calib_batches, low=1)
    check_int("eval_batches", eval_batches, low=1, optional=True, hint=f"None: enough batches for {EVAL_ROWS:,} rows")
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    recipe = _as_recipe(config)
    budget = _check_budget(budget_ne, budget_auc, max_size_ratio, recipe)
    _check_out_dir(out_dir, ckpt_path, overwrite)
    ckpt = load_checkpoint(ckpt_path, unsafe_full_unpickle)
    module = _build_module(ckpt, ckpt_path, module_class)
    dm = _datamodule(datamodule, ckpt, module, batch_size)
    eval_batches = eval_batches or _batches_for(EVAL_ROWS, dm, budget is not None)
    contract = ModelContract.infer(module, next(iter(dm.val_dataloader())))
    reference = copy.deepcopy(module).eval()
    with _staged(out_dir) as stage:
        plan_summary = None
        if budget is None:
            quantize_(module, recipe)
            calibration = calibrate(module, dm.train_dataloader(), calib_batches)
        else:
            module, recipe, calibration, plan_summary = _budgeted(module, recipe, budget, dm, stage, out_dir, calib_batches,
                                                                  eval_batches, budget_task, max_size_ratio, objective)  # fmt: skip
        tasks = list(contract.tasks)
        evaluation = _evaluate(reference, module, dm.val_dataloader(), eval_batches, contract)
        meta: dict[str, Any] = {
            "format": format, "tasks": tasks, "checkpoint": str(ckpt_path),
            "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
            "hyper_parameters": _init_args(ckpt["hyper_parameters"]), "recipe": config_to_dict(recipe),
        }  # fmt: skip
        if plan_summary is not None:
            meta["budget_plan"] = plan_summary
        example = _export_example(contract, next(iter(dm.val_dataloader())))
        if format == "onnx":
            meta["onnx"] = export_onnx(module, stage / "model.onnx", example, extra_metadata={"tasks": tasks})
        else:
            meta["torch"] = export_torch(module, stage / "model.pt2", example, extra_metadata={"tasks": tasks})
        report = {"checkpoint": str(ckpt_path), "format": format, **module_report(module, reference), "evaluation": evaluation}
        if plan_summary is not None:
            report["budget_plan"] = plan_summary
        report["export_parity"] = meta[format]["parity"]
        (stage / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (stage / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
        import yaml

        (stage / "quant_config.yaml").write_text(yaml.safe_dump(config_to_dict(recipe), sort_keys=False))
    return report


#: rows of held-out data for the report's accuracy check, and for each of a budgeted search's search
#: and confirmation sets (a relative NE change of 0.1% is within noise on a few thousand rows)
EVAL_ROWS = 16_384


def _batches_for(rows: int, dm: pl.LightningDataModule, two_sets: bool) -> int:
    """Batches of ``dm.val_dataloader()`` holding ``rows`` rows; with ``two_sets`` (search and
    confirmation) at most half of the validation batches, so the two sets never overlap."""
    loader = dm.val_dataloader()
    size = _rows(next(iter(loader)))
    want = max(1, math.ceil(rows / max(size, 1)))
    try:
        available = len(loader)
    except TypeError:  # an iterable without a length: take what it gives
        return want
    return max(1, min(want, available // 2 if two_sets else available))


def _rows(batch: Any) -> int:
    """Rows of a batch: a RecsysBatch's size, else the first dimension of its first tensor."""
    if isinstance(batch, RecsysBatch):
        return batch.batch_size
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (tuple, list)) else []
    return _rows(values[0]) if values else 1


def _datamodule(given: pl.LightningDataModule | str | None, ckpt: dict, module: nn.Module,
                batch_size: int) -> pl.LightningDataModule:  # fmt: skip
    """The calibration / evaluation data: ``given``, else the checkpoint's own data module, else
    (or for ``"synthetic"``) synthetic data sized from the model's feature spec; set up for fitting."""
    if given is not None and given != "synthetic" and not isinstance(given, pl.LightningDataModule):
        raise TypeError(f"datamodule must be a LightningDataModule, 'synthetic' or None, got {type(given).__name__}")
    dm = given if isinstance(given, pl.LightningDataModule) else None
    saved = False  # the checkpoint's own data module: its paths are read as `lrs fit` was given them
    if dm is None and given is None:
        dm = _checkpoint_datamodule(ckpt)
        saved = dm is not None
    if dm is None:
        dm = _default_datamodule(getattr(module, "feature_spec", None), batch_size)
    try:
        dm.prepare_data()
        dm.setup("fit")
    except FileNotFoundError as err:
        if not saved:
            raise
        raise FileNotFoundError(
            f"the data module saved in the checkpoint ({type(dm).__name__}) cannot find its data: {err}. Paths are "
            "read as `lrs fit` was given them: run from the directory it ran in, or pass datamodule= (CLI: --data "
            "path/to/data.yaml with class_path / init_args) pointing at the data"
        ) from None
    return dm


def _tensorrt_artifact(ckpt_path, out_dir, config, datamodule, calib_batches: int, overwrite: bool,
                       unsafe_full_unpickle: bool, module_class, batch_size: int, budget_ne, budget_auc,
                       precision: str) -> dict[str, Any]:  # fmt: skip
    """``format="tensorrt"``: the float model compiled by Torch-TensorRT at ``precision`` (TensorRT does
    its own int8 via ModelOpt), written with its ``meta.json`` into ``out_dir``. Needs CUDA: the
    package / GPU check runs before anything is read or written."""
    from .export.tensorrt import export_tensorrt, import_torch_tensorrt

    if precision not in TENSORRT_PRECISIONS:
        raise ValueError(f"trt_precision must be one of {TENSORRT_PRECISIONS}, got {precision!r}")
    if config is not None or budget_ne is not None or budget_auc is not None:
        raise ValueError("format='tensorrt' takes its precision from trt_precision (--trt-precision); a quantization "
                         "config or accuracy budget applies to the onnx / torch formats")  # fmt: skip
    import_torch_tensorrt()
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    _check_out_dir(out_dir, ckpt_path, overwrite)
    ckpt = load_checkpoint(ckpt_path, unsafe_full_unpickle)
    module = _build_module(ckpt, ckpt_path, module_class).eval()
    dm = _datamodule(datamodule, ckpt, module, batch_size)
    calib = list(itertools.islice(dm.train_dataloader(), calib_batches)) if precision == "int8" else None
    with _staged(out_dir) as stage:
        meta = export_tensorrt(module, stage, next(iter(dm.val_dataloader())), precision, calibration_batches=calib,
                               extra_metadata={"tasks": list(getattr(module, "tasks", [])), "checkpoint": str(ckpt_path)})  # fmt: skip
    return {"checkpoint": str(ckpt_path), "format": "tensorrt", "tensorrt": meta}


def _check_budget(budget_ne: float | None, budget_auc: float | None, max_size_ratio: float | None,
                  recipe: QuantConfig) -> Budget | None:  # fmt: skip
    if budget_ne is None and budget_auc is None:
        if max_size_ratio is not None:
            raise ConfigurationError("max_size_ratio only applies to a budgeted search: give budget_ne and/or budget_auc too")
        return None
    check_size_ratio(max_size_ratio)
    if not isinstance(recipe, RecipeConfig) or recipe.overrides:
        raise ConfigurationError(
            "a budgeted search chooses each module's precision itself: the config may only set the embeddings / linears "
            "defaults (int8 linear options, int4_clip), not overrides"
        )
    return Budget(budget_ne, budget_auc)


def _budgeted(module: nn.Module, recipe: RecipeConfig, budget: Budget, dm: pl.LightningDataModule, stage: Path,
              out_dir: Path, calib_batches: int, eval_batches: int, task: str | int, max_size_ratio: float | None,
              objective: str):  # fmt: skip
    """Search a plan meeting ``budget``; write the plan report into ``stage``; when no plan meets the
    budget, publish the report alone into ``out_dir`` and refuse (raise)."""
    emb, lin = recipe.embeddings, recipe.linears
    options = TrialOptions(
        task=task, calib_batches=calib_batches, eval_batches=eval_batches, confirm_batches=eval_batches,
        linear_config=lin if isinstance(lin, Int8LinearConfig) else None,
        int4_clip=emb.clip if isinstance(emb, RowwiseEmbeddingConfig) and emb.bits == 4 else "minmax",
        table_precisions=LATENCY_TABLE_LADDER if objective == "latency" else TABLE_LADDER,
    )  # fmt: skip
    result = search_plan(module, dm.train_dataloader(), dm.val_dataloader(), budget_ne=budget.ne, budget_auc=budget.auc,
                         max_size_ratio=max_size_ratio, options=options)  # fmt: skip
    write_plan_report(result, stage)
    if not result.met:
        _publish(stage, out_dir)
        raise BudgetNotMetError(
            f"refused: {result.message}. No artifact was written; the plan report is in {out_dir / PLAN_REPORT_FILES[1]} "
            "(and .json, .png)"
        )
    keep = ("met", "message", "budget", "plan", "search", "confirm", "bytes", "fp32_bytes", "size_ratio", "int8_bytes_fraction")
    summary = {k: v for k, v in result.to_dict().items() if k in keep}
    return result.model, result.recipe, result.calibration, summary
