"""The reference DLRM under each optimizer of lightning_recsys.optim (Muon hybrid, MLorcAdamW, CounterSGD)
against Adam, same data and seed.
The code is the demo's ``optim`` step (``lightning_recsys/demo/optim.py``)::

    python examples/optim.py
"""

from lightning_recsys.demo.optim import main

if __name__ == "__main__":
    main()
