"""Re-export of :mod:`lightning_recsys.distributed.dp_hook` (the former path)."""

from ..distributed.dp_hook import DCTCommState, dct_comm_hook, sampled_threshold, threshold_compress, threshold_compress_

__all__ = ["DCTCommState", "dct_comm_hook", "sampled_threshold", "threshold_compress", "threshold_compress_"]
