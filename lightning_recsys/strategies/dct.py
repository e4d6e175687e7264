"""Re-export of :mod:`lightning_recsys.distributed.dct` (the former path)."""

from ..distributed.dct import DCTStrategy

__all__ = ["DCTStrategy"]
