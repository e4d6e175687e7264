"""Two "nodes" on one machine: two network namespaces joined by a veth pair, one DCT process in each.

The test creates its own uniquely named namespaces, uses addresses only inside them and deletes them
afterwards (also on failure); it skips, saying why, where namespaces cannot be created (no root/iproute2).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multinode_worker.py")


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def two_namespaces():
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    ns, veth, addr = [f"lrst{tag}{i}" for i in range(2)], [f"vt{tag}{i}" for i in range(2)], ["10.213.9.1", "10.213.9.2"]
    created = []
    try:
        for n in ns:
            _sh("ip", "netns", "add", n)
            created.append(n)
        _sh("ip", "link", "add", veth[0], "netns", ns[0], "type", "veth", "peer", "name", veth[1], "netns", ns[1])
        for i in range(2):
            _sh("ip", "-n", ns[i], "addr", "add", f"{addr[i]}/24", "dev", veth[i])
            _sh("ip", "-n", ns[i], "link", "set", veth[i], "up")
            _sh("ip", "-n", ns[i], "link", "set", "lo", "up")
    except subprocess.CalledProcessError as err:
        for n in created:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        pytest.skip(f"cannot set up network namespaces here: {' '.join(err.cmd)}: {err.stderr.strip()}")
    try:
        yield ns, veth, addr
    finally:
        for n in created:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def _launch(ns: str, env: dict[str, str], args: list[str]) -> subprocess.Popen:
    base = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        base.pop(k, None)
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], cwd=ROOT, env={**base, **env}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("launcher", ["env", "torchrun"])
def test_two_nodes_over_veth(two_namespaces, tmp_path, launcher):
    ns, veth, addr = two_namespaces
    procs = []
    for node in range(2):
        env = {"GLOO_SOCKET_IFNAME": veth[node]}
        if launcher == "env":  # Lightning's LightningEnvironment
            env.update(MASTER_ADDR=addr[0], MASTER_PORT="29533", NODE_RANK=str(node), WORLD_SIZE="2")
            args = [sys.executable, str(WORKER), str(tmp_path)]
        else:  # torchrun on each node -> TorchElasticEnvironment
            args = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                    "--node-rank", str(node), "--master-addr", addr[0], "--master-port", "29534",
                    str(WORKER), str(tmp_path)]  # fmt: skip
        procs.append(_launch(ns[node], env, args))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=100)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("the two-node run did not finish within 100 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)
    r0, r1 = (torch.load(tmp_path / f"node{i}.pt", weights_only=False) for i in range(2))
    expected = "LightningEnvironment" if launcher == "env" else "TorchElasticEnvironment"
    for r in (r0, r1):
        assert r["world_size"] == 2 and r["cluster"] == expected and r["master_addr"] == addr[0]
        assert r["hook_calls"] >= 4
    assert r0["params"].keys() == r1["params"].keys()
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
