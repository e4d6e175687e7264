"""A click + conversion model trained with a plain sum of losses, then with MultiBalance.
The code is the demo's ``multibalance`` step (``lightning_recsys/demo/multibalance.py``)::

    python examples/multibalance.py
"""

from lightning_recsys.demo.multibalance import main

if __name__ == "__main__":
    main()
