"""Re-export of the boundary codecs, now :mod:`lightning_recsys.distributed.codecs` (the former path)."""

from ..distributed.codecs import CODECS, VALUE_BITS, BoundaryCodec, boundary_all_to_all

__all__ = ["BoundaryCodec", "boundary_all_to_all", "CODECS", "VALUE_BITS"]
