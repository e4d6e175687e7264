"""Train a DLRM while FIITED prunes 90% of its embedding chunks; the tables really shrink, and the
pruned tables export to plain modules.
The code is the demo's ``fiited`` step (``lightning_recsys/demo/fiited.py``)::

    python examples/fiited.py
"""

from lightning_recsys.demo.fiited import main

if __name__ == "__main__":
    main()
