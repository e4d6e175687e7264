"""One "node" of tests/strategies/test_multinode.py: ``Trainer(strategy="dct", num_nodes=2, devices=1)``.

The cluster is described the way a cluster user would: MASTER_ADDR/MASTER_PORT/NODE_RANK (Lightning's
``LightningEnvironment``) or torchrun's variables (``TorchElasticEnvironment``); GLOO_SOCKET_IFNAME picks
the network interface. Writes ``OUT_DIR/node{rank}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

import lightning_recsys  # noqa: F401  (registers "dct")
from tests.strategies.dct_worker import PlainModule, plain_loader


def main() -> None:
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    model = PlainModule()
    trainer = pl.Trainer(
        strategy="dct", accelerator="cpu", devices=1, num_nodes=2, max_steps=4, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(model, plain_loader())
    st = trainer.strategy.comm_state
    torch.save(
        {"params": {k: v.detach() for k, v in model.state_dict().items()}, "world_size": trainer.world_size,
         "cluster": type(trainer.strategy.cluster_environment).__name__, "hook_calls": st.hook_calls,
         "master_addr": trainer.strategy.cluster_environment.main_address},
        out / f"node{trainer.global_rank}.pt",
    )  # fmt: skip
    # tear the process group down explicitly: leaving it to interpreter exit sometimes aborts the
    # process ("terminate called without an active exception") after all the work is done
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
