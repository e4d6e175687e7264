"""Model-specific export lowerings, registered with :func:`~lightning_recsys.quant.export.lowering.register_lowering`
when imported (``lightning_recsys.quant.export`` imports this package)."""

from . import dlrm  # noqa: F401
