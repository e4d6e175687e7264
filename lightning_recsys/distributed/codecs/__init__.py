"""Boundary codecs: how the sharded collection's pooled embeddings cross the model-parallel all-to-all.

One interface, :class:`BoundaryCodec` (``encode_forward`` / ``decode_forward``, ``encode_backward`` /
``decode_backward``, ``forward_bytes`` / ``backward_bytes``, ``state_dict`` / ``load_state_dict``), one
class per family, and ``BoundaryCodec(name, **options)`` as the factory by name:

- :mod:`.cast`: ``"fp32"`` (uncompressed, 4 bytes per entry each way), ``"fp16"``, ``"int8"`` (row-wise
  fp32 absmax scale): every entry, both directions (the qcomms-style anchors).
- :mod:`.quant`: ``"quant"`` (``DCTStrategy``'s default): every entry, 4 bits forward and 2 backward on
  Gaussian levels times factored int8 scale codes.
- :mod:`.sparse`: ``"topk"`` / ``"threshold"`` (DCT's sparse boundary): kept positions and values forward,
  the gradients at those positions backward.

Every codec but ``"fp32"`` starts at ``start_step``: earlier training steps send fp32 (a warm-up). The
step counter, thresholds and refresh steps are the codec's state (``state_dict`` / ``load_state_dict``).

Example:
    >>> import torch
    >>> codec = BoundaryCodec("topk", keep_ratio=0.25)
    >>> type(codec).__name__, codec
    ('TopKCodec', BoundaryCodec('topk', bits=32, grad_bits=32, group=None, keep_ratio=0.25))
    >>> x = torch.tensor([[0.1, -3.0, 0.2, 2.0]])
    >>> codec.decode_forward(codec.encode_forward(x)[0], 1, 4)[0].tolist()
    [[0.0, -3.0, 0.0, 0.0]]
"""

from .all_to_all import boundary_all_to_all
from .base import CODECS, VALUE_BITS, BoundaryCodec, Codec, Rounding, Scales, check_codec_options, codec_class
from .cast import Fp16Codec, Fp32Codec, Int8Codec
from .quant import QuantCodec
from .sparse import SparseCodec, ThresholdCodec, TopKCodec
from .values import Levels

__all__ = [
    "CODECS",
    "VALUE_BITS",
    "BoundaryCodec",
    "Codec",
    "Fp16Codec",
    "Fp32Codec",
    "Int8Codec",
    "Levels",
    "QuantCodec",
    "Rounding",
    "Scales",
    "SparseCodec",
    "ThresholdCodec",
    "TopKCodec",
    "boundary_all_to_all",
    "check_codec_options",
    "codec_class",
]
