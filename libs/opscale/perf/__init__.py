"""The performance model: catalogues of models and GPUs, iteration latency, load times.

Everything here is pure arithmetic over `ModelSpec` and `Sku`; the simulated engine and the planners
ask it how long an iteration or a model load takes and how much power it draws.
"""

from opscale.perf.catalog import (
    Catalog,
    CatalogError,
    UnknownNameError,
    default_catalog,
    load_catalog,
    parse_models,
    parse_skus,
)
from opscale.perf.latency import (
    DEFAULT_INTERCONNECT_GBPS,
    IterationCost,
    LatencyModel,
    RooflineLatencyModel,
    RooflineParams,
    attn_pairs,
    weights_fit,
)
from opscale.perf.loading import LoadSource, LoadTimeParams, load_time_s

__all__ = [
    "DEFAULT_INTERCONNECT_GBPS", "Catalog", "CatalogError", "IterationCost", "LatencyModel", "LoadSource",
    "LoadTimeParams", "RooflineLatencyModel", "RooflineParams", "UnknownNameError", "attn_pairs",
    "default_catalog", "load_catalog", "load_time_s", "parse_models", "parse_skus", "weights_fit",
]
