"""Names of the aggregators and poisoning attacks (no heavy imports: the CLI parser reads them).

:data:`DEFAULT_AGGREGATOR` is the aggregator iotsentry uses unless told otherwise; it was chosen
from the Q5 poisoning matrix (``iotsentry redteam poison``, see docs/results.md).
"""

from __future__ import annotations

__all__ = ["AGGREGATORS", "ATTACKS", "DEFAULT_AGGREGATOR"]

AGGREGATORS = (
    "fedavg",
    "median",
    "trimmed-mean",
    "krum",
    "multi-krum",
    "bulyan",
    "norm-clip",
    "fltrust",
    "flame",
    "guarded",
)

ATTACKS = ("none", "label-flip", "sign-flip", "scaling", "gaussian", "alie", "min-max", "min-sum", "targeted")

DEFAULT_AGGREGATOR = "guarded"
