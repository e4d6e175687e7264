"""DCT benchmark: bytes, step time and AUC of gradient / boundary compression in 2 gloo processes.

Part A (data parallel, full DLRM replicated; embedding gradients are dense, as with plain DDP):
plain DDP (fp32 all-reduce), torch's fp16 compress hook, PowerSGD rank 1 and 4, DCT's threshold hook.
Part B (hybrid: tables sharded table-wise, MLPs data parallel): the pooled-embedding all-to-all in fp32
(the reference), fp16, int8 (row-wise scale), and the codecs of ``BoundaryCodec``: ``mp_quant`` (the
strategy's default: 4-bit values forward, 2-bit gradients backward, Gaussian levels, factored int8 scales:
one per table of each block times one per sample), per-vector-scale variants (the former default
``mp_quant_group_sign``: 4-bit uniform forward, scaled 1-bit signs backward), 3-bit / 2-bit / stochastic
variants, per-sample top-k and thresholded values (DCT's sparse boundary, with fp32 or quantized values),
and a warm-up variant; ``mp_seed_sweep``: fp32, the default and two alternatives retrained for more seeds
(data and model init) and a longer run, since single-run AUC deltas of ~0.002 are within the run-to-run
spread of any 4/2-bit boundary. Part C: part A's DDP vs DCT, and the hybrid layouts (sharded
tables with fp32 or top-k boundary, DCT hook on the MLPs), across two network namespaces joined by a
veth pair rate-limited to 1 Gbit/s with ``tc tbf`` (needs root and iproute2); only step times count there
(AUC comes from parts A and B).

DCT runs with ``min_compress_numel=100_000``: the replicated embedding tables are thresholded, every MLP
tensor (< 100k entries) is sent exactly (thresholding the MLPs too at 1% density cost ~0.02 AUC with Adam
in an earlier run of this script). PowerSGD runs through a wrapper that finishes each bucket before
returning (torch's hook waits inside future callbacks, which can deadlock gloo's worker threads).

Bytes are those handed to the collectives (``torch.distributed`` calls wrapped for the whole step, so
the anchors' hooks are counted the same way as ours), per rank and step, averaged over the steps after
compression starts (step >= 2). Same model, data and seeds for every method.

    python benchmarks/dct.py [--quick] [--out PATH]
    DCT_BENCH_PARTS=mp DCT_BENCH_MERGE=1 python benchmarks/dct.py   # re-run part B only, update its figures
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import interleaved_times, parse_args, write_results  # noqa: E402
from lightning_recsys.data import SyntheticCTRDataModule  # noqa: E402
from lightning_recsys.distributed import ignore_sharded_parameters, shard_embeddings  # noqa: E402
from lightning_recsys.models import DLRM  # noqa: E402
from lightning_recsys.distributed import DCTCommState, dct_comm_hook  # noqa: E402

DP_METHODS = ("ddp", "fp16", "powersgd_r1", "powersgd_r4", "dct")
MP_CODECS: dict[str, dict] = {  # part B: shard_embeddings options per method; the first is the reference
    "mp_fp32": {"codec": "fp32"},
    "mp_quant": {"codec": "quant"},  # DCTStrategy's default: 4 bits forward, 2 backward, Gaussian levels, factored scales
    "mp_fp16": {"codec": "fp16"},
    "mp_int8": {"codec": "int8"},
    "mp_quant3_factored": {"codec": "quant", "bits": 3},  # the default but 3 bits forward
    # one int8 scale per table vector of each sample (scales="group"):
    "mp_quant_group_sign": {"codec": "quant", "bits": 4, "grad_bits": 1, "levels": "uniform", "scales": "group"},  # former default
    "mp_quant3": {"codec": "quant", "bits": 3, "grad_bits": 1, "levels": "uniform", "scales": "group"},
    "mp_quant4_grad4": {"codec": "quant", "bits": 4, "grad_bits": 4, "levels": "uniform", "scales": "group"},
    "mp_quant4_grad2": {"codec": "quant", "bits": 4, "grad_bits": 2, "levels": "uniform", "scales": "group"},
    "mp_quant4_stochastic_sign": {"codec": "quant", "bits": 4, "grad_bits": 1, "grad_rounding": "stochastic", "levels": "uniform",
                                  "scales": "group"},  # fmt: skip
    "mp_quant4_gauss_grad2": {"codec": "quant", "bits": 4, "grad_bits": 2, "levels": "gaussian", "scales": "group"},
    "mp_quant3_gauss_grad2": {"codec": "quant", "bits": 3, "grad_bits": 2, "levels": "gaussian", "scales": "group"},
    "mp_topk": {"codec": "topk", "keep_ratio": 0.05},  # 1 of 16 per table, fp32 value + uint8 index
    "mp_topk_row": {"codec": "topk", "keep_ratio": 0.05, "per_table": False},
    "mp_topk_warmup": {"codec": "topk", "keep_ratio": 0.05},  # fp32 for the first half of the steps (config)
    "mp_topk50_q4": {"codec": "topk", "keep_ratio": 0.5, "bits": 4, "grad_bits": 1},
    "mp_threshold": {"codec": "threshold", "keep_ratio": 0.05, "refresh_interval": 20},
    "mp_threshold50_q4": {"codec": "threshold", "keep_ratio": 0.5, "bits": 4, "grad_bits": 1, "refresh_interval": 20},
}
MP_DEFAULT = "mp_quant"  # its figures are mp_bytes_reduction / mp_auc_delta_vs_uncompressed_mp (no suffix)
MP_METHODS = tuple(MP_CODECS)
# robustness of part B: these methods (the first is the reference) retrained for more (seed, steps) settings
MP_SWEEP_METHODS = ("mp_fp32", "mp_quant", "mp_quant_group_sign", "mp_quant4_gauss_grad2")
MP_SWEEP_SETTINGS = ((1, 120), (2, 120), (3, 120), (0, 360))
CHANGES = [  # to this benchmark since its first committed full run (figures there: benchmarks/results/dct.json history)
    "DCT hook: one packed all_gather per bucket with fixed capacities (no count exchange per step), "
    "word-wise selection; capacity_factor=1.0 (the DCT default): at most density*numel pairs per thresholded "
    "parameter, the rest stays in the residual. Same model, data, seeds and options otherwise.",
    "MP: mp_topk is now the per-table top-k codec (ceil(keep_ratio*16)=1 of each table's 16 pooled entries per "
    "sample); mp_topk_row is the former whole-row top-k, kept as an anchor.",
    "MP: the default (unsuffixed mp_bytes_reduction / mp_auc_delta_vs_uncompressed_mp, metrics.mp_quant) is now the "
    "'quant' codec (4-bit values + int8 scale per table vector forward, scaled 1-bit signs backward); every sparse "
    "top-k/threshold variant measured lost >= 0.01 AUC (mp_topk: -0.063). Sparse codecs send a bitmask where it is "
    "smaller than indices. Part B figures re-measured alone (DCT_BENCH_PARTS=mp DCT_BENCH_MERGE=1); parts A and C "
    "(incl. the hybrid_topk link figure, whose codec is unchanged) are from the previous full run.",
    "--quick: 8 steps, 5000-row tables, min_compress_numel 50k, fewer timing rounds (was 12 steps, 20000 rows: 2 min 11 s).",
    "MP: the default 'quant' codec is now 4-bit Gaussian-level values forward, 2-bit Gaussian-level gradients "
    "backward, with factored int8 scales (one per table of each all-to-all block times one per sample) instead of "
    "one per table vector; the former default (4-bit uniform, scaled 1-bit signs, per-vector scales) is "
    "mp_quant_group_sign and lost 0.0046 AUC at 360 steps. Part B adds mp_seed_sweep: fp32 MP, the default and two "
    "alternatives retrained for seeds 1-3 (data and model init) at 120 steps and seed 0 at 360 steps.",
]


class Counter:
    """Counts bytes handed to torch.distributed collectives while ``on``."""

    on = False
    nbytes = 0

    @classmethod
    def install(cls) -> None:
        def wrap(fn, pick):
            @functools.wraps(fn)
            def inner(*args, **kwargs):
                if cls.on:
                    t = pick(*args, **kwargs)
                    cls.nbytes += t.numel() * t.element_size()
                return fn(*args, **kwargs)

            return inner

        dist.all_reduce = wrap(dist.all_reduce, lambda t, *a, **k: t)
        dist.all_gather = wrap(dist.all_gather, lambda out, t, *a, **k: t)
        dist.all_to_all_single = wrap(dist.all_to_all_single, lambda out, t, *a, **k: t)


def config(quick: bool) -> dict:
    # --quick: smaller tables (5000 rows) and threshold limit (50k entries, so those tables are still
    # thresholded), fewer steps and timing rounds; every figure is still measured
    return {
        "steps": 8 if quick else 120, "batch_size": 256 if quick else 512, "num_val": 1024 if quick else 16384,
        "max_rows": 5000 if quick else 20000, "embedding_dim": 16, "lr": 3e-3, "density": 0.01, "refresh_interval": 50,
        "powersgd_start": 2, "time_rounds": 2 if quick else 3, "time_steps": 2 if quick else 3,
        "warmup_steps_link": 3, "link_steps": 2 if quick else 8, "link_rounds": 2 if quick else 5, "link_rate": "1gbit",
        "min_compress_numel": 50_000 if quick else 100_000, "capacity_factor": 1.0,
        "dp_methods": list(DP_METHODS), "mp_methods": list(MP_METHODS),
        "mp_seed_sweep": {"methods": list(MP_SWEEP_METHODS[:2] if quick else MP_SWEEP_METHODS),
                          "settings": [[1, 8]] if quick else [list(x) for x in MP_SWEEP_SETTINGS]},
        "mp_codecs": {**MP_CODECS, "mp_topk_warmup": {**MP_CODECS["mp_topk_warmup"], "start_step": (8 if quick else 120) // 2}},
        "changes": CHANGES,
    }  # fmt: skip


def datamodule(cfg: dict) -> SyntheticCTRDataModule:
    n = cfg["steps"] * 2 * cfg["batch_size"]
    return SyntheticCTRDataModule(num_train=n, num_val=cfg["num_val"], num_test=cfg["batch_size"],
                                  batch_size=cfg["batch_size"], max_rows=cfg["max_rows"], seed=cfg.get("seed", 0))  # fmt: skip


def _powersgd_sync(state: powerSGD_hook.PowerSGDState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    # torch's PowerSGD waits inside future callbacks; on gloo two buckets in flight can block both of the
    # process group's worker threads (deadlock). Finishing each bucket before returning avoids that.
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(powerSGD_hook.powerSGD_hook(state, bucket).wait())
    return fut


_powersgd_sync.__annotations__ = {"state": object, "bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}


def hook_for(name: str, cfg: dict):
    if name == "ddp" or name.startswith("mp_"):
        return None, default_hooks.allreduce_hook
    if name == "fp16":
        return None, default_hooks.fp16_compress_hook
    if name.startswith("powersgd"):
        rank = int(name[-1])
        return powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                           start_powerSGD_iter=cfg["powersgd_start"]), _powersgd_sync
    return DCTCommState(density=cfg["density"], refresh_interval=cfg["refresh_interval"],
                        min_compress_numel=cfg["min_compress_numel"], capacity_factor=cfg["capacity_factor"]), dct_comm_hook


class Run:
    """One method: model, DDP wrapper with its hook, optimizer, byte log."""

    def __init__(self, name: str, dm: SyntheticCTRDataModule, cfg: dict) -> None:
        torch.manual_seed(cfg.get("seed", 0))
        model = DLRM.from_spec(dm.feature_spec, embedding_dim=cfg["embedding_dim"], bottom_mlp=(64,), top_mlp=(64, 32))
        self.sharded = None
        if name.startswith(("mp_", "hybrid_")):  # hybrid_<codec>: mp_<codec>'s tables + DCT hook on the MLPs
            options = cfg["mp_codecs"]["mp_" + name.split("_", 1)[1]]
            self.sharded = shard_embeddings(model, **options)[0]
            ignore_sharded_parameters(model)
        self.name, self.dm, self.model = name, dm, model
        self.ddp = DDP(model, broadcast_buffers=False)
        state, hook = hook_for(name, cfg)
        if isinstance(state, DCTCommState):
            state.bind(self.ddp)
        self.state = state
        self.ddp.register_comm_hook(state, hook)
        self.opt = torch.optim.Adam(self.ddp.parameters(), lr=cfg["lr"])
        self.i = 0
        self.bytes: list[int] = []
        self.mp_bytes: list[int] = []
        self.mp_dense_bytes: list[int] = []
        self.nb = math.ceil(dm.num_train / dm.batch_size)

    def step(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        batch = self.dm.make_batch("train", (self.i * world + rank) % self.nb)[0]
        before = dict(self.sharded.stats) if self.sharded is not None else None
        Counter.nbytes, Counter.on = 0, True
        logits = self.ddp(batch)
        loss = sum(F.binary_cross_entropy_with_logits(logits[:, j], batch.labels[t]) for j, t in enumerate(self.dm.feature_spec.tasks))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        Counter.on = False
        self.bytes.append(Counter.nbytes)
        if self.sharded is not None:
            s = self.sharded.stats
            self.mp_bytes.append(s["forward_bytes"] + s["backward_bytes"] - before["forward_bytes"] - before["backward_bytes"])
            dense = s["dense_forward_bytes"] + s["dense_backward_bytes"]
            self.mp_dense_bytes.append(dense - before["dense_forward_bytes"] - before["dense_backward_bytes"])
        self.i += 1

    @torch.no_grad()
    def auc(self) -> float:
        from torchmetrics.classification import BinaryAUROC

        rank, world = dist.get_rank(), dist.get_world_size()
        nb = math.ceil(self.dm.num_val / self.dm.batch_size)
        preds, labels = [], []
        for i in range(rank, nb - nb % world, world):
            batch = self.dm.make_batch("val", i)[0]
            preds.append(self.model(batch)[:, 0])
            labels.append(batch.labels[self.dm.feature_spec.tasks[0]])
        p, y = torch.cat(preds), torch.cat(labels)
        ps, ys = [torch.empty_like(p) for _ in range(world)], [torch.empty_like(y) for _ in range(world)]
        dist.all_gather(ps, p)
        dist.all_gather(ys, y)
        return float(BinaryAUROC()(torch.cat(ps), torch.cat(ys).long()))

    def summary(self, step_time: float) -> dict:
        after = self.bytes[2:] or self.bytes
        out = {"bytes_per_step": sum(after) / len(after), "step_time": step_time, "final_auc": self.auc()}
        if self.mp_bytes:
            out["mp_bytes_per_step"] = sum(self.mp_bytes) / len(self.mp_bytes)
            out["mp_fp32_equivalent_bytes_per_step"] = sum(self.mp_dense_bytes) / len(self.mp_dense_bytes)
        if isinstance(self.state, DCTCommState):
            out["hook_bytes_per_step"] = self.state.total_bytes_sent / self.state.step
            out["achieved_density"] = self.state.last_stats["density"]
        return out


def train_and_time(names: tuple[str, ...], cfg: dict, steps: int) -> dict[str, dict]:
    dm = datamodule(cfg)
    runs = {n: Run(n, dm, cfg) for n in names}
    for run in runs.values():
        t0 = time.perf_counter()
        for _ in range(steps):
            run.step()
        if dist.get_rank() == 0:
            print(f"[dct bench] {run.name}: {steps} steps in {time.perf_counter() - t0:.1f} s", flush=True)

    def many(run: Run) -> None:
        for _ in range(cfg["time_steps"]):
            run.step()

    aucs = {n: None for n in names}
    results = {}
    for n, run in runs.items():  # AUC after the training steps, before the timing steps
        aucs[n] = run.auc()
    times = interleaved_times({n: functools.partial(many, r) for n, r in runs.items()}, repeats=cfg["time_rounds"], warmup=0)
    for n, run in runs.items():
        results[n] = run.summary(times[n] / cfg["time_steps"])
        results[n]["final_auc"] = aucs[n]
    return results


def mp_seed_sweep(cfg: dict) -> dict[str, dict]:
    """Part B's robustness runs: ``mp_seed_sweep["methods"]`` (the first is the fp32 reference) trained
    afresh for every (seed, steps) of ``mp_seed_sweep["settings"]`` (seed: data and model init); AUC and
    boundary bytes per setting, as in the main MP run (no timing)."""
    sweep = cfg["mp_seed_sweep"]
    out = {}
    for seed, steps in sweep["settings"]:
        scfg = {**cfg, "seed": seed, "steps": steps}
        dm = datamodule(scfg)
        got = {}
        for name in sweep["methods"]:
            run = Run(name, dm, scfg)
            for _ in range(steps):
                run.step()
            got[name] = {"final_auc": run.auc(), "mp_bytes_per_step": sum(run.mp_bytes) / len(run.mp_bytes)}
        out[f"seed{seed}_steps{steps}"] = got
        if dist.get_rank() == 0:
            print(f"[dct bench] mp seed sweep: seed {seed}, {steps} steps done", flush=True)
    return out


def _worker(rank: int, world: int, port: int, cfg: dict, parts: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    Counter.install()
    res = {}
    if "dp" in parts:
        res.update(train_and_time(tuple(cfg["dp_methods"]), cfg, cfg["steps"]))
    if "mp" in parts:
        res.update(train_and_time(tuple(cfg["mp_methods"]), cfg, cfg["steps"]))
        if cfg["mp_seed_sweep"]["settings"]:
            res["mp_seed_sweep"] = mp_seed_sweep(cfg)
    if "link" in parts:
        link_cfg = {**cfg, "time_steps": cfg["link_steps"], "time_rounds": cfg["link_rounds"]}
        res.update(train_and_time(("ddp", "dct", "hybrid_fp32", "hybrid_topk"), link_cfg, cfg["warmup_steps_link"]))
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(cfg: dict, parts: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res.json")
        mp.start_processes(_worker, args=(2, _free_port(), cfg, parts, out), nprocs=2, start_method="spawn")
        return json.loads(Path(out).read_text())


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def run_limited_link(cfg: dict) -> dict:
    """Part A's DDP vs DCT over a veth pair between two fresh namespaces, each side ``tc tbf`` limited."""
    if shutil.which("ip") is None or shutil.which("tc") is None or os.geteuid() != 0:
        return {"skipped": "needs root, ip and tc"}
    tag = uuid.uuid4().hex[:6]
    ns, veth = [f"lrsb{tag}{i}" for i in range(2)], [f"vb{tag}{i}" for i in range(2)]
    addr = ["10.213.7.1", "10.213.7.2"]
    try:
        for n in ns:
            _sh("ip", "netns", "add", n)
        _sh("ip", "link", "add", veth[0], "netns", ns[0], "type", "veth", "peer", "name", veth[1], "netns", ns[1])
        for i in range(2):
            _sh("ip", "-n", ns[i], "addr", "add", f"{addr[i]}/24", "dev", veth[i])
            _sh("ip", "-n", ns[i], "link", "set", veth[i], "up")
            _sh("ip", "-n", ns[i], "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", ns[i], "tc", "qdisc", "add", "dev", veth[i], "root", "tbf",
                "rate", cfg["link_rate"], "burst", "256kb", "latency", "50ms")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "link.json")
            procs = []
            for i in range(2):
                env = {**os.environ, "MASTER_ADDR": addr[0], "MASTER_PORT": "29611", "GLOO_SOCKET_IFNAME": veth[i],
                       "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
                cmd = ["ip", "netns", "exec", ns[i], sys.executable, __file__, "--link-rank", str(i),
                       "--link-out", out, "--cfg", json.dumps(cfg)]  # fmt: skip
                procs.append(subprocess.Popen(cmd, env=env))
            for p in procs:
                p.wait(timeout=400)
            if any(p.returncode for p in procs):
                return {"skipped": f"link workers failed: {[p.returncode for p in procs]}"}
            return json.loads(Path(out).read_text())
    except subprocess.CalledProcessError as err:
        return {"skipped": f"namespace setup failed: {' '.join(err.cmd)}: {err.stderr.strip()}"}
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def main() -> None:
    if "--link-rank" in sys.argv:
        i = sys.argv.index("--link-rank")
        cfg = json.loads(sys.argv[sys.argv.index("--cfg") + 1])
        out = sys.argv[sys.argv.index("--link-out") + 1]
        _worker(int(sys.argv[i + 1]), 2, int(os.environ["MASTER_PORT"]), cfg, ["link"], out)
        return
    args = parse_args("dct")
    cfg = config(args.quick)
    t0 = time.perf_counter()
    parts = os.environ.get("DCT_BENCH_PARTS", "dp,mp,link").split(",")
    if os.environ.get("DCT_BENCH_MP_METHODS"):  # development: a subset of part B
        cfg["mp_methods"] = os.environ["DCT_BENCH_MP_METHODS"].split(",")
    if os.environ.get("DCT_BENCH_MP_EXTRA"):  # development: more codecs, JSON {name: shard_embeddings options}
        cfg["mp_codecs"] = {**cfg["mp_codecs"], **json.loads(os.environ["DCT_BENCH_MP_EXTRA"])}
    res = run_local(cfg, [p for p in parts if p != "link"])
    link = run_limited_link(cfg) if "link" in parts else {"skipped": "not requested"}
    ratios: dict[str, float] = {}
    if "ddp" in res:
        ddp, dct = res["ddp"], res["dct"]
        ratios["dp_bytes_reduction"] = ddp["bytes_per_step"] / dct["bytes_per_step"]
        ratios["auc_delta_vs_ddp"] = dct["final_auc"] - ddp["final_auc"]
        ratios["dp_step_time_ratio_vs_ddp_localhost"] = ddp["step_time"] / dct["step_time"]
        for n in ("fp16", "powersgd_r1", "powersgd_r4"):
            ratios[f"dp_bytes_reduction_{n}"] = ddp["bytes_per_step"] / res[n]["bytes_per_step"]
            ratios[f"auc_delta_vs_ddp_{n}"] = res[n]["final_auc"] - ddp["final_auc"]
    if "mp_fp32" in res:
        base = res["mp_fp32"]
        for n in cfg["mp_methods"][1:]:
            suffix = "" if n == MP_DEFAULT else "_" + n.removeprefix("mp_")
            ratios[f"mp_bytes_reduction{suffix}"] = base["mp_bytes_per_step"] / res[n]["mp_bytes_per_step"]
            ratios[f"mp_auc_delta_vs_uncompressed_mp{suffix}"] = res[n]["final_auc"] - base["final_auc"]
    if "mp_seed_sweep" in res:
        metrics_sweep = _sweep_table(res.pop("mp_seed_sweep"), res, cfg, ratios)
    if "skipped" not in link:
        ratios["speedup_vs_ddp_on_limited_link"] = link["ddp"]["step_time"] / link["dct"]["step_time"]
        for codec in ("fp32", "topk"):  # same math as mp_<codec> in part B (MLPs < min_compress_numel go exactly)
            ratios[f"speedup_vs_ddp_on_limited_link_hybrid_{codec}"] = link["ddp"]["step_time"] / link[f"hybrid_{codec}"]["step_time"]
    metrics = {k: res[k] for k in ("dct", MP_DEFAULT) if k in res}
    if "mp_fp32" in res and cfg["mp_seed_sweep"]["settings"]:
        metrics["mp_seed_sweep"] = metrics_sweep
    metrics.update(limited_link=link, wall_s=time.perf_counter() - t0)
    anchors = {n: res[n] for n in (*cfg["dp_methods"][:-1], *cfg["mp_methods"]) if n in res and n != MP_DEFAULT}
    if os.environ.get("DCT_BENCH_MERGE"):
        cfg, metrics, anchors, ratios = _merge_previous(args.out, parts, cfg, metrics, anchors, ratios)
    write_results(args, "dct", cfg, metrics, anchors, ratios)


def _sweep_table(sweep: dict[str, dict], res: dict, cfg: dict, ratios: dict) -> dict[str, dict]:
    """Per swept method: bytes reduction and AUC delta vs fp32 MP in every setting (the main run's
    ``seed0_steps<steps>`` included); ``ratios`` gets each method's worst (lowest) and largest absolute delta and
    its smallest reduction."""
    runs = {f"seed0_steps{cfg['steps']}": res, **sweep}
    table = {}
    for n in cfg["mp_seed_sweep"]["methods"][1:]:
        rows = {k: {"mp_bytes_reduction": r["mp_fp32"]["mp_bytes_per_step"] / r[n]["mp_bytes_per_step"],
                    "auc_delta": r[n]["final_auc"] - r["mp_fp32"]["final_auc"]} for k, r in runs.items() if n in r}  # fmt: skip
        suffix = "" if n == MP_DEFAULT else "_" + n.removeprefix("mp_")
        ratios[f"mp_seed_sweep_worst_auc_delta{suffix}"] = min(v["auc_delta"] for v in rows.values())
        ratios[f"mp_seed_sweep_max_abs_auc_delta{suffix}"] = max(abs(v["auc_delta"]) for v in rows.values())
        ratios[f"mp_seed_sweep_min_bytes_reduction{suffix}"] = min(v["mp_bytes_reduction"] for v in rows.values())
        table[n] = rows
    return table


def _merge_previous(path: Path, parts: list[str], cfg: dict, metrics: dict, anchors: dict, ratios: dict) -> tuple[dict, ...]:
    """``DCT_BENCH_MERGE=1`` with ``DCT_BENCH_PARTS=mp``: part B's new figures, every other figure (parts A
    and C) kept from the existing result file ``path`` (which must be a full run)."""
    if parts != ["mp"]:
        raise ValueError(f"DCT_BENCH_MERGE needs DCT_BENCH_PARTS=mp, got {','.join(parts)!r}")
    old = json.loads(path.read_text())
    if old.get("quick") or old.get("name") != "dct":
        raise ValueError(f"DCT_BENCH_MERGE: {path} is not a full run of this benchmark")
    keep = lambda d: {k: v for k, v in d.items() if not k.startswith("mp_")}  # noqa: E731
    cfg = {**keep(old["config"]), **{k: v for k, v in cfg.items() if k.startswith("mp_")}, "changes": cfg["changes"]}
    metrics = {**keep(old["metrics"]), **{k: v for k, v in metrics.items() if k.startswith("mp_")},
               "wall_s_mp_part": metrics["wall_s"]}  # fmt: skip
    return cfg, metrics, {**keep(old["anchors"]), **anchors}, {**keep(old["ratios"]), **ratios}


if __name__ == "__main__":
    main()
