"""Quantize a trained checkpoint to int8, score with the ONNX artifact, then quantize it again to a
0.1 % relative NE budget. The code is the demo's ``quant`` step (``lightning_recsys/demo/quant.py``)::

    python examples/quant.py [CKPT]
"""

import sys

from lightning_recsys.demo.quant import main

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
