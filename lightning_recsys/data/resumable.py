"""A training ``DataLoader`` that a Trainer resumes mid-epoch exactly.

Lightning saves the ``state_dict()`` of a stateful training loader in the checkpoint and hands it back
with ``load_state_dict`` before the resumed epoch starts; a plain ``DataLoader`` would restart the
epoch from its first batch instead. The state is the number of batches the fit loop has taken in the
current epoch (``trainer.fit_loop.epoch_loop.batch_progress.current.ready``), not the number this
loader has produced: the loop prefetches, so those differ by the batches in flight. On resume the
loader skips that many batches of its (deterministic) epoch order once; the skipped batches are still
produced and dropped, so a resume costs their loading time. Under DDP each rank skips its own count of
its own shard, which equals the saved one (all ranks take the same number of batches).

Example:
    >>> from torch.utils.data import TensorDataset
    >>> import torch
    >>> loader = ResumableDataLoader(TensorDataset(torch.arange(6)), batch_size=2)
    >>> loader.load_state_dict({"batches_taken": 2})
    >>> [b[0].tolist() for b in loader]   # the resumed epoch continues at batch 2
    [[4, 5]]
    >>> [b[0].tolist() for b in loader]   # later epochs are whole
    [[0, 1], [2, 3], [4, 5]]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from .._validation import check_int

__all__ = ["ResumableDataLoader"]


class ResumableDataLoader(DataLoader):
    """``DataLoader`` with ``state_dict``/``load_state_dict`` for exact mid-epoch resume.

    ``datamodule``: the data module whose ``trainer`` reports the fit loop's progress (any object with
    a ``trainer`` attribute; without a trainer the state is ``0`` batches taken).
    """

    def __init__(self, *args: Any, datamodule: pl.LightningDataModule | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        trainer = getattr(self.datamodule, "trainer", None)
        taken = 0 if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        return {"batches_taken": taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"batches_taken"}:
            raise ValueError(f"ResumableDataLoader state must hold exactly 'batches_taken', got keys {sorted(state_dict)}")
        taken = state_dict["batches_taken"]
        check_int("batches_taken", taken, low=0, owner="ResumableDataLoader state: ")
        self._skip = taken

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        iterator = super().__iter__()
        try:
            length = len(self)
        except TypeError:  # an iterable dataset without a length
            length = None
        # a state saved after the epoch's last batch means the next epoch starts whole
        if skip == 0 or (length is not None and skip >= length):
            return iterator
        return itertools.islice(iterator, skip, None)
