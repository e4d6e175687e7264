"""A DLRM trained with ``DCTStrategy`` in 2 CPU processes (gloo); ``--mp`` shards the tables and
compresses the model-parallel boundary. The code is the demo's ``dct`` step (``lightning_recsys/demo/dct.py``)::

    python examples/dct.py [--mp]
"""

import sys

from lightning_recsys.demo.dct import main

if __name__ == "__main__":
    main(mp_compression="--mp" in sys.argv[1:])
