"""Shared benchmark plumbing (contract in ../shared/BENCHMARKS.md): arguments, timing, JSON results.

Every benchmark script does::

    args = parse_args("fiited")                      # --quick, --out
    t = median_time(fn, repeats=5, warmup=1)         # seconds, median of repeats after warm-up
    write_results(args, name="fiited", config={...}, metrics={...}, anchors={...}, ratios={...})
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(name: str, argv: list[str] | None = None, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--quick`` (under a minute on 2 cores, every figure still measured) and ``--out PATH``."""
    parser = argparse.ArgumentParser(description=f"lightning-recsys benchmark: {name}")
    parser.add_argument("--quick", action="store_true", help="small data, few steps: < 60 s on 2 CPU cores")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON output (default benchmarks/results/{name}.json)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS_DIR / (f"{name}.quick.json" if args.quick else f"{name}.json")
    torch.set_num_threads(args.threads)
    return args


class CpuSteal:
    """Share of CPU time the hypervisor took from this VM while the block ran (``/proc/stat`` steal;
    ``None`` where there is no such file). Timing ratios of multi-threaded candidates drift with it::

        with CpuSteal() as steal:
            times = interleaved_times(...)
        steal.fraction
    """

    fraction: float | None = None

    @staticmethod
    def _read() -> list[int] | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        return [int(v) for v in fields[1:]] if fields and fields[0] == "cpu" else None

    def __enter__(self) -> CpuSteal:
        self._start = self._read()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._read()
        if self._start is None or end is None or len(end) < 8:
            return
        delta = [b - a for a, b in zip(self._start, end)]
        self.fraction = delta[7] / sum(delta) if sum(delta) > 0 else 0.0


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: Mapping[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median times of several candidates run in turn (A B C, C A B, ...), so load changes hit all alike;
    the order is shuffled every round (seeded), so no candidate always runs after the same one (whose
    cache footprint or lingering threads would bias it)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def blocked_times(fns: Mapping[str, Callable[[int], Any]], rounds: int = 5, block: int = 5, seed: int = 0) -> dict[str, float]:
    """Median steady-state time of each candidate. In each of ``rounds`` rounds every candidate, in a
    shuffled order, makes ``block`` calls in a row; the first call of a block refills the caches the
    other candidates evicted and is not counted. ``fns[k](i)`` gets a running call index (e.g. to
    score the next of several batches). This is how a serving process sees a model (it runs one model
    back to back), while the rounds spread load changes over all candidates; calls interleaved one by
    one across several large models (:func:`interleaved_times`) time every call with cold caches."""
    if block < 2:
        raise ValueError(f"block must be >= 2 (its first call is not counted), got {block}")
    samples: dict[str, list[float]] = {k: [] for k in fns}
    calls = dict.fromkeys(fns, 0)
    order, rng = list(fns), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            for j in range(block):
                t0 = time.perf_counter()
                fns[k](calls[k])
                if j:
                    samples[k].append(time.perf_counter() - t0)
                calls[k] += 1
    return {k: statistics.median(v) for k, v in samples.items()}


def tensor_bytes(*objs: Any) -> int:
    """Bytes held by the tensors in modules, optimizers, dicts, lists or tensors (shared storage counted once)."""
    seen: set[int] = set()
    total = 0

    def visit(o: Any) -> None:
        nonlocal total
        if isinstance(o, torch.Tensor):
            key = o.untyped_storage().data_ptr() if o.numel() else id(o)
            if key not in seen:
                seen.add(key)
                total += o.untyped_storage().nbytes()
        elif isinstance(o, torch.nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                visit(t)
        elif isinstance(o, torch.optim.Optimizer):
            visit(list(o.state.values()))
        elif isinstance(o, Mapping):
            for v in o.values():
                visit(v)
        elif isinstance(o, (list, tuple, set)):
            for v in o:
                visit(v)

    for o in objs:
        visit(o)
    return total


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_results(
    args: argparse.Namespace,
    name: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    anchors: Mapping[str, Any],
    ratios: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the JSON result file and print a readable table; return the result dict."""
    result = {
        "name": name,
        "quick": bool(args.quick),
        "torch": torch.__version__,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, threads={torch.get_num_threads()}",
        "config": dict(config),
        "metrics": dict(metrics),
        "anchors": dict(anchors),
        "ratios": dict(ratios),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"\n== {name} ({'quick' if args.quick else 'full'}) ==")
    for section in ("metrics", "anchors", "ratios"):
        print(f"-- {section}")
        _print_nested(result[section], indent=2)
    print(f"results written to {args.out}")
    return result


def _print_nested(d: Mapping[str, Any], indent: int) -> None:
    for k, v in d.items():
        if isinstance(v, Mapping):
            print(" " * indent + f"{k}:")
            _print_nested(v, indent + 2)
        elif isinstance(v, float):
            print(" " * indent + f"{k:<40} {v:.6g}")
        else:
            print(" " * indent + f"{k:<40} {v}")
