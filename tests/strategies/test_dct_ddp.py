"""Real 2-process gloo runs of ``Trainer(strategy="dct")`` (script: dct_worker.py, launched with a deadline)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dct_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dct")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(WORKER), str(out)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"2-process DCT run did not finish within 100 s; output tail:\n{log[-3000:]}")
    ranks = [out / f"rank{r}.pt" for r in range(2)]
    if not all(p.exists() for p in ranks):
        pytest.fail(f"2-process DCT run failed (exit {proc.returncode}); output tail:\n{log[-3000:]}")
    return [torch.load(p, weights_only=False) for p in ranks], out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(150)
def test_trainer_by_name_registers_hook_on_cpu_and_logs(runs):
    (r0, r1), _ = runs
    info = r0["by_name"]
    assert info["strategy"] == "DCTStrategy"
    assert info["hook_calls"] >= 8 and info["step"] == 8  # our hook ran on CPU/gloo, once per step at least
    assert 0 < info["last_stats"]["density"] < 0.2 and info["last_stats"]["compression_ratio"] > 4
    assert set(info["logged"]) == {"dct_density", "dct_bytes_sent", "dct_compression_ratio"}
    assert info["total_bytes"] > 0


@pytest.mark.timeout(150)
def test_replicas_stay_identical(runs):
    (r0, r1), _ = runs
    assert _equal(r0["by_name"]["params"], r1["by_name"]["params"])
    assert _equal(r0["mp"]["dense_params"], r1["mp"]["dense_params"])
    assert _equal(r0["mp"]["full"], r1["mp"]["full"])


@pytest.mark.timeout(150)
def test_threshold_refresh_cadence_in_training(runs):
    (r0, r1), _ = runs
    for r in (r0, r1):
        assert r["straight"]["comm"]["refresh_steps"] == [2, 5]  # start_step=2, refresh_interval=3, 8 steps
        assert r["straight"]["comm"]["step"] == 8


@pytest.mark.timeout(150)
def test_resume_is_exact_including_hook_state(runs):
    (r0, r1), _ = runs
    for r in (r0, r1):
        assert r["half_comm"]["step"] == 4 and r["half_comm"]["residuals"]  # the checkpoint held real state
        s, res = r["straight"], r["resumed"]
        assert _equal(s["params"], res["params"])
        assert _equal(s["comm"]["residuals"], res["comm"]["residuals"])
        assert s["comm"]["thresholds"] == res["comm"]["thresholds"] and s["comm"]["step"] == res["comm"]["step"]


@pytest.mark.timeout(150)
def test_mp_sharded_resume_is_exact(runs):
    (r0, r1), _ = runs
    assert set(r0["own_local_tables"]).isdisjoint(r1["own_local_tables"])
    for r in (r0, r1):
        assert _equal(r["own_straight"]["state"], r["own_resumed"]["state"])
        assert _equal(r["own_straight"]["comm"]["residuals"], r["own_resumed"]["comm"]["residuals"])
        cs, cr = r["own_straight"]["codec"], r["own_resumed"]["codec"]
        assert cs["step"] == cr["step"] == 8 and cs["refresh_steps"] == cr["refresh_steps"] == [1, 4, 7]
        assert torch.equal(cs["tau"], cr["tau"])


@pytest.mark.timeout(150)
def test_mp_compression_shards_our_dlrm(runs):
    (r0, r1), _ = runs
    m0, m1 = r0["mp"], r1["mp"]
    assert m0["is_sharded"] and m1["is_sharded"]
    assert sorted(m0["local_tables"] + m1["local_tables"]) == ["C1", "C2", "C3", "C4"]
    assert len(m0["full"]) == 4  # the gathered state holds every table
    assert m0["after_fit"] == "EmbeddingBagCollection"  # full tables swapped back after fit
    assert _equal(m0["after_fit_state"], m0["full"]) and _equal(m1["after_fit_state"], m0["full"])
    assert r0["mp_ckpt_keys"] == ["emb.tables.a.weight", "emb.tables.b.weight", "emb.tables.c.weight"]  # so does the file
    s = m0["stats"]
    # default codec: 4 bits per entry forward, 2 backward, plus one scale byte per table and one per sample
    # of each all-to-all block (8-d tables: less than 1 extra bit per entry)
    assert 32 / 5 < s["dense_forward_bytes"] / s["forward_bytes"] < 32 / 4
    assert 32 / 3 < s["dense_backward_bytes"] / s["backward_bytes"] < 32 / 2
    assert 0.0 <= m0["val_auc"] <= 1.0


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["boundary", "boundary_row"])  # per-table top-k (default), whole-row top-k
def test_compressed_all_to_all_equals_masked_reference(runs, mode):
    (r0, r1), _ = runs
    for r in (r0, r1):
        b = r[mode]
        assert torch.equal(b["out_cmp"], b["out_masked_ref"])
        assert b["grads_cmp"].keys() == b["grads_ref"].keys() and b["grads_cmp"]
        for name in b["grads_cmp"]:
            torch.testing.assert_close(b["grads_cmp"][name], b["grads_ref"][name], rtol=0, atol=1e-6)
        if mode == "boundary":
            assert b["stats_cmp"]["forward_bytes"] < b["stats_ref"]["forward_bytes"]
            assert b["fp16"]["max_err"] < 1e-3 and b["int8"]["max_err"] < 0.02


@pytest.mark.timeout(150)
def test_mp_compression_without_collection_is_a_clear_error(runs):
    _, out = runs
    msg = (out / "mp_error_rank0.txt").read_text()
    assert "mp_compression=True" in msg and "EmbeddingBagCollection" in msg and "PlainModule" in msg


@pytest.mark.timeout(150)
def test_falls_back_to_all_reduce_where_pairs_do_not_pay(runs):
    (r0, r1), _ = runs
    for r in (r0, r1):
        f = r["fallback"]
        assert f["stats"]["bytes_sent"] == 4 * f["numel"]  # one dense all-reduce (no count exchange)
        assert _equal(f["plain"], f["dct"])  # same sum as plain DDP's all-reduce


@pytest.mark.timeout(150)
def test_sparse_gradients_are_all_reduced_as_they_are(runs):
    """sparse=True tables (their DDP bucket is a sparse tensor; it crashed the hook) train as with plain DDP."""
    (r0, r1), _ = runs
    for r in (r0, r1):
        s = r["sparse"]
        assert s["plain"].keys() == s["dct"].keys()
        for k in s["plain"]:
            torch.testing.assert_close(s["dct"][k], s["plain"][k], rtol=1e-6, atol=1e-7)
        assert 0 < s["stats"]["bytes_sent"]
    assert _equal(r0["sparse"]["dct"], r1["sparse"]["dct"])  # replicas identical


@pytest.mark.timeout(150)
def test_your_own_table_is_split_between_the_ranks(runs):
    """TabularDataModule under strategy="dct": Lightning's distributed sampler replaces the module's shuffling
    sampler, the two ranks read disjoint halves of the training rows, and the replicas stay identical."""
    (r0, r1), _ = runs
    a, b = r0["tabular"], r1["tabular"]
    assert a["sampler"] == b["sampler"] == "DistributedSampler"
    assert not set(a["rows"]) & set(b["rows"]) and sorted(a["rows"] + b["rows"]) == sorted(a["train_rows"])
    assert _equal(a["params"], b["params"])
