"""GPU check (run whenever a CUDA machine is available; about 5 minutes, always under 8).

1. TensorRT: the reference DLRM of benchmarks/quant.py (26 tables of 20k rows x 64, bottom 13-512-256-64,
   top 512-512-256-1; untrained weights, which speed and parity do not depend on) built into a
   TensorRT engine with the package's path (``lightning_recsys.quant.export.tensorrt.export_tensorrt``)
   in ``fp16`` and ``int8`` (NVIDIA ModelOpt calibration on 4 batches; skipped with the reason when
   ``nvidia-modelopt`` is missing), loaded with ``TensorRTPredictor`` and timed at batch 64 and 512
   (median of 50 calls after 10, ``torch.cuda.synchronize`` via the CPU copy of the logits), with the
   PyTorch model's fp32 CUDA eager time and the largest logit difference against it.
2. DCT on NCCL, when there are 2 GPUs: ``Trainer(strategy=DCTStrategy(process_group_backend="nccl"),
   devices=2)`` fits the same DLRM for 40 steps (data-parallel thresholding, then with
   ``mp_compression=True``) in a subprocess (Lightning relaunches it once per rank); steps per second
   and the final training loss. One GPU: the engine only.

Skips cleanly (a JSON saying why, exit status 0) without CUDA or ``torch_tensorrt``. ``--dry-run`` runs
every step that does not need a GPU on CPU (model, lowering and ``torch.export`` of the TensorRT
program, DCT strategy construction) to check the script itself.

Usage::

    python benchmarks/gpu_check.py                 # writes $OUT/gpu_check.json (or benchmarks/results/gpu_check.json)
    python benchmarks/gpu_check.py --out r.json --dry-run
    python benchmarks/gpu_check.py --quick         # `make bench-quick`: --dry-run without CUDA
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import median_time  # noqa: E402
from lightning_recsys.data import RecsysBatch, SyntheticCTRDataModule  # noqa: E402
from lightning_recsys.models import RecsysModule  # noqa: E402

REFERENCE_MLPS = {"bottom_mlp": (512, 256), "top_mlp": (512, 512, 256)}  # as benchmarks/quant.py
ROWS, DIM, DCT_STEPS, DCT_TIMEOUT_S = 20_000, 64, 40, 150
DCT_START_BY_S = 240  # the DCT fits start only if the engines took less, so the whole check ends before 8 minutes


def _datamodule(batch_size: int = 512) -> SyntheticCTRDataModule:
    return SyntheticCTRDataModule(num_train=DCT_STEPS * 2 * batch_size, num_val=1024, num_test=2048,
                                  batch_size=batch_size, max_rows=ROWS, seed=0)  # fmt: skip


def _model(dm: SyntheticCTRDataModule) -> RecsysModule:
    torch.manual_seed(0)
    return RecsysModule(feature_spec=dm.feature_spec, embedding_dim=DIM, **REFERENCE_MLPS)


def _slice(batch: RecsysBatch, n: int) -> RecsysBatch:
    from lightning_recsys.data import SparseFeature

    sparse = {k: SparseFeature(f.values[: int(f.offsets[n])], f.offsets[: n + 1].clone()) for k, f in batch.sparse.items()}
    return RecsysBatch(batch.dense[:n], sparse, {k: v[:n] for k, v in batch.labels.items()})


def tensorrt_section(dry_run: bool) -> dict[str, Any]:
    """Build, load and time fp16 and int8 engines (``dry_run``: prepare the fp16 program on CPU only)."""
    from lightning_recsys.quant.export.tensorrt import TensorRTPredictor, export_tensorrt, prepare_tensorrt_program

    dm = _datamodule()
    model = _model(dm).model.eval()
    batches = [dm.make_batch("test", i)[0] for i in range(4)]
    if dry_run:
        t0 = time.perf_counter()
        prepared = prepare_tensorrt_program(model, _slice(batches[0], 64), "fp16", max_batch=512, device="cpu")
        return {"dry_run": True, "prepared_fp16_on_cpu_s": time.perf_counter() - t0,
                "program_inputs": [spec["name"] for spec in prepared.input_specs()]}
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError as err:
        return {"skipped": f"torch_tensorrt is not installed ({err}); pip install torch-tensorrt matching torch {torch.__version__}"}
    out: dict[str, Any] = {"torch_tensorrt": torch_tensorrt.__version__}
    cuda_model = model.to("cuda")
    for bs in (64, 512):
        b = _slice(batches[0], bs).to("cuda")
        with torch.no_grad():
            out[f"pytorch_fp32_cuda_ms_b{bs}"] = median_time(lambda: cuda_model(b).float().cpu(), repeats=50, warmup=10) * 1e3
    model = model.to("cpu")
    with torch.no_grad():
        reference = model(batches[1])
    for precision in ("fp16", "int8"):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            try:
                calib = batches if precision == "int8" else None
                export_tensorrt(model, Path(d) / "engine", _slice(batches[0], 64), precision, calibration_batches=calib,
                                max_batch=512, opt_batch=512)  # fmt: skip
            except ImportError as err:  # int8 needs nvidia-modelopt
                out[precision] = {"skipped": f"{type(err).__name__}: {err}"}
                continue
            except Exception as err:  # noqa: BLE001 - record the failure, go on with the next precision
                out[precision] = {"failed": f"{type(err).__name__}: {err}"}
                continue
            res: dict[str, Any] = {"build_s": time.perf_counter() - t0}
            predictor = TensorRTPredictor(Path(d) / "engine")
            res["max_abs_logit_diff_vs_fp32"] = float((predictor(batches[1]) - reference).abs().max())
            for bs in (64, 512):
                b = _slice(batches[2], bs)
                res[f"ms_b{bs}"] = median_time(lambda: predictor(b), repeats=50, warmup=10) * 1e3
            out[precision] = res
    return out


def dct_worker(out: Path, mp: bool) -> None:
    """One DCT fit on every visible GPU (Lightning's subprocess launcher runs this once per rank)."""
    import lightning.pytorch as pl

    from lightning_recsys.distributed import DCTStrategy

    dm = _datamodule()
    module = _model(dm)
    strategy = DCTStrategy(process_group_backend="nccl", mp_compression=mp)
    trainer = pl.Trainer(accelerator="gpu", devices=2, strategy=strategy, max_steps=DCT_STEPS, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         limit_val_batches=0)  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    if trainer.global_rank == 0:
        loss = trainer.callback_metrics.get("train_loss", trainer.callback_metrics.get("loss"))
        out.write_text(json.dumps({"steps": DCT_STEPS, "seconds": seconds, "steps_per_s": DCT_STEPS / seconds,
                                   "final_train_loss": None if loss is None else float(loss),
                                   "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}))  # fmt: skip


def dct_section(dry_run: bool) -> dict[str, Any]:
    """The DCT fits in subprocesses (data parallel, then model-parallel compression) on 2 GPUs."""
    if dry_run:
        from lightning_recsys.distributed import DCTStrategy

        DCTStrategy(process_group_backend="nccl", mp_compression=True)
        return {"dry_run": True, "strategy_constructed": True}
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): DCT on NCCL needs 2"}
    res = {}
    for name, mp in (("data_parallel", False), ("model_parallel_compression", True)):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "dct.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--dct-worker", str(out)] + (["--mp"] if mp else [])
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DCT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                res[name] = {"failed": f"timed out after {DCT_TIMEOUT_S} s"}
                continue
            if proc.returncode or not out.is_file():
                res[name] = {"failed": f"exit status {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
            else:
                res[name] = json.loads(out.read_text())
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="lightning-recsys GPU check: TensorRT engines and DCT on NCCL")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default $OUT/gpu_check.json, else "
                   "benchmarks/results/gpu_check[.quick].json)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="run what needs no GPU on CPU, to check this script")
    p.add_argument("--quick", action="store_true", help="as `make bench-quick` calls it: --dry-run where there is no CUDA")
    p.add_argument("--dct-worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--mp", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dct_worker is not None:
        dct_worker(args.dct_worker, args.mp)
        return {}
    if args.out is None:
        results = Path(__file__).resolve().parent / "results"
        args.out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else \
            results / ("gpu_check.quick.json" if args.quick else "gpu_check.json")  # fmt: skip
    args.dry_run = args.dry_run or (args.quick and not torch.cuda.is_available())
    t0 = time.perf_counter()
    result: dict[str, Any] = {"name": "gpu_check", "torch": torch.__version__, "dry_run": args.dry_run,
                              "cuda": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
                              "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}  # fmt: skip
    if not args.dry_run and not torch.cuda.is_available():
        result["skipped"] = "no CUDA device: nothing to check (run with --dry-run to check the script on CPU)"
    else:
        result["tensorrt"] = tensorrt_section(args.dry_run)
        elapsed = time.perf_counter() - t0
        if elapsed > DCT_START_BY_S:
            result["dct_nccl"] = {"skipped": f"the TensorRT section took {elapsed:.0f} s; DCT skipped to stay under 8 minutes"}
        else:
            result["dct_nccl"] = dct_section(args.dry_run)
    result["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
