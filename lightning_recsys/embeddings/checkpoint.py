"""Checkpoint format of chunked tables: the dense weight of the module they replace.

A chunked table saves under its module name exactly what the ``nn.Embedding`` / ``nn.EmbeddingBag`` it
replaces would save: ``weight [num_rows, d]``, pruned chunks as zeros. So the checkpoint of a pruned model
loads into the user's unmodified module (``load_from_checkpoint``, ``load_state_dict``,
``Trainer.fit/test(ckpt_path=...)``) and into chunked tables alike. Which chunks are stored (the compact
layout) is not part of the weights: FIITED keeps it in its own checkpoint state and re-prunes the tables on
load. A pool's optimizer state is converted the same way: :func:`dense_optimizer_state` lays it out like the
dense weight, :func:`pool_optimizer_state` puts it back. In memory the tables keep only their compact pool;
the dense weight exists only while a state dict is written.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.embeddings.chunked import ChunkedEmbedding
    >>> table = ChunkedEmbedding.from_dense(nn.Embedding(10, 8), chunk_size=4)
    >>> keep = torch.zeros(10, 2, dtype=torch.bool); keep[:3] = True
    >>> _ = table.set_kept(keep)
    >>> list(table.state_dict())                       # what nn.Embedding(10, 8) saves and loads
    ['weight']
    >>> nn.Embedding(10, 8).load_state_dict(table.state_dict())
    <All keys matched successfully>
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .chunked import ChunkedEmbeddingBase

__all__ = ["dense_layout", "dense_optimizer_state", "load_dense", "load_optimizer_layout", "pool_optimizer_state", "save_optimizer_layout"]

_COMPACT_KEYS = ("pool", "mask", "base")  # the format of chunked checkpoints before the dense weight


def dense_layout(table: ChunkedEmbeddingBase, values: Tensor) -> Tensor:
    """``values [P + 1, C]`` (a row per pool slot: the pool, or optimizer state of its shape) laid out as the
    dense ``[num_rows, d]`` table; pruned chunks read slot 0's row."""
    slots = table._slots(torch.arange(table.num_embeddings, device=table.mask.device))
    return F.embedding(slots, values).reshape(table.num_embeddings, table.embedding_dim)


def load_dense(
    table: ChunkedEmbeddingBase, state_dict: dict[str, Any], prefix: str, missing_keys: list[str],
    unexpected_keys: list[str], error_msgs: list[str],
) -> None:  # fmt: skip
    """``table._load_from_state_dict``: load ``prefix + "weight"`` (dense ``[num_rows, d]``).

    The table keeps its layout when it stores every non-zero chunk of the weight (the parameter is then
    updated in place, so an optimizer holding it is unaffected); otherwise every chunk is kept (a new pool
    parameter). A compact ``pool`` / ``mask`` / ``base`` triple, as written before, is loaded as it is.
    """
    keys = {k[len(prefix) :] for k in state_dict if k.startswith(prefix)}
    if "weight" in keys:
        _load_weight(table, state_dict[prefix + "weight"], prefix + "weight", error_msgs)
        keys.discard("weight")
    elif keys.issuperset(_COMPACT_KEYS):
        _load_compact(table, state_dict[prefix + "pool"], state_dict[prefix + "mask"], prefix, error_msgs)
        keys.difference_update(_COMPACT_KEYS)
    else:
        missing_keys.append(prefix + "weight")
    unexpected_keys.extend(prefix + k for k in sorted(keys))


@torch.no_grad()
def _load_weight(table: ChunkedEmbeddingBase, weight: Any, key: str, error_msgs: list[str]) -> None:
    shape = torch.Size((table.num_embeddings, table.embedding_dim))
    if not isinstance(weight, Tensor) or weight.shape != shape:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        error_msgs.append(
            f"size mismatch for {key}: copying a param with shape {got} from checkpoint, the shape in current model is {shape}."
        )
        return
    chunks = weight.detach().to(table.pool).reshape(table.num_embeddings, table.num_chunks, table.chunk_size)
    kept = table.kept_mask()
    if chunks[~kept].any():  # values where the layout stores nothing: keep every chunk
        kept = torch.ones_like(kept)
        table.set_kept(kept)
    table.pool[1:].copy_(chunks[kept])


@torch.no_grad()
def _load_compact(table: ChunkedEmbeddingBase, pool: Tensor, mask: Tensor, prefix: str, error_msgs: list[str]) -> None:
    if mask.shape != table.mask.shape or pool.dim() != 2 or pool.shape[1] != table.chunk_size:
        error_msgs.append(
            f"size mismatch for {prefix}pool / {prefix}mask: got {tuple(pool.shape)} / {tuple(mask.shape)}, expected "
            f"[*, {table.chunk_size}] / {tuple(table.mask.shape)}."
        )
        return
    keep = table.kept_mask(mask)
    if int(keep.sum()) + 1 != pool.shape[0]:
        error_msgs.append(f"{prefix}pool has {pool.shape[0]} slots but {prefix}mask keeps {int(keep.sum())} chunks (+1 zero slot).")
        return
    table.set_kept(keep.to(table.mask.device))  # the saved ``base`` follows from the row-major mask
    table.pool.copy_(pool)


def dense_optimizer_state(table: ChunkedEmbeddingBase, state: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """The optimizer ``state`` of ``table.pool`` laid out like the dense weight: every tensor of the pool's
    shape becomes ``[num_rows, d]`` (pruned chunks get slot 0's row: the state of a chunk never updated);
    other values (``step``) are kept. Returns it with slot 0's row of every converted tensor (what
    :func:`pool_optimizer_state` needs), or ``(None, {})`` when a tensor has another shape (e.g. one value per
    slot): such state has no dense form."""
    dense: dict[str, Any] = {}
    slot0: dict[str, Tensor] = {}
    for key, value in state.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            if value.shape != table.pool.shape:
                return None, {}
            dense[key] = dense_layout(table, value)
            slot0[key] = value[0].clone()
        else:
            dense[key] = value
    return dense, slot0


def pool_optimizer_state(table: ChunkedEmbeddingBase, state: dict[str, Any], keep: Tensor, slot0: dict[str, Tensor]) -> dict[str, Any]:
    """Inverse of :func:`dense_optimizer_state` for the layout ``keep [num_rows, K]``."""
    out = dict(state)
    for key, row in slot0.items():
        value = state[key]
        if tuple(value.shape) != (table.num_embeddings, table.embedding_dim):
            raise ValueError(
                f"optimizer state {key!r} of table {table.num_embeddings}x{table.embedding_dim} has shape "
                f"{tuple(value.shape)} in the checkpoint; expected the dense layout of the weight"
            )
        chunks = value.reshape(table.num_embeddings, table.num_chunks, table.chunk_size)
        out[key] = torch.cat([row.to(value).unsqueeze(0), chunks[keep.to(value.device)]])
    return out


def save_optimizer_layout(tables: dict[str, ChunkedEmbeddingBase], optimizers: list, saved_states: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rewrite the tables' entries of a checkpoint's ``optimizer_states`` (``saved_states``, in place) in the
    dense layout of their ``weight``; return where they went (for :func:`load_optimizer_layout`). State without
    a dense form (one value per pool slot) is moved out of the optimizer state into the returned record."""
    where: dict[str, list[dict[str, Any]]] = {}
    for i, (optimizer, saved) in enumerate(zip(optimizers, saved_states)):
        index = {
            id(p): j for live, packed in zip(optimizer.param_groups, saved["param_groups"]) for p, j in zip(live["params"], packed["params"])
        }
        for name, table in tables.items():
            j = index.get(id(table.pool))
            if j is None or j not in saved["state"]:
                continue
            dense, slot0 = dense_optimizer_state(table, saved["state"][j])
            if dense is None:
                where.setdefault(name, []).append({"optimizer": i, "param": j, "state": saved["state"].pop(j)})
            else:
                saved["state"][j] = dense  # a new dict: the live optimizer state is untouched
                where.setdefault(name, []).append({"optimizer": i, "param": j, "slot0": slot0})
    return where


def load_optimizer_layout(tables: dict[str, ChunkedEmbeddingBase], state: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """Put the tables' optimizer state of ``checkpoint`` back in the pool layout recorded in the callback
    ``state`` (``optimizer_layout`` and ``layout``)."""
    for name, entries in state.get("optimizer_layout", {}).items():
        if name not in tables:
            continue  # not chunked in this run: its dense state fits the plain weight
        table = tables[name]
        keep = table.kept_mask(state["layout"][name].to(table.mask.device))
        for entry in entries:
            saved = checkpoint["optimizer_states"][entry["optimizer"]]["state"]
            j = entry["param"]
            if "state" in entry:
                saved[j] = entry["state"]
            elif j in saved:
                saved[j] = pool_optimizer_state(table, saved[j], keep, entry["slot0"])
