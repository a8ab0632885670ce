"""The performance model: catalogues of models and GPUs, iteration latency, load times.

Everything here is pure arithmetic over `ModelSpec` and `Sku`; the simulated engine and the planners
ask it how long an iteration or a model load takes and how much power it draws. Iteration latency
comes from a roofline (`latency`), calibrated against measured operator profiles (`calibration`), or
from the profiles themselves where a directory of them is given (`profiles`, `profiled`).
"""

from opscale.perf.calibration import (
    CALIBRATED_PARAMS,
    GENERIC,
    AllReduceFit,
    GpuRoof,
    RooflineFit,
    calibrate,
    calibrated_params,
    fit_allreduce,
    fit_roofline,
    roofs_for,
)
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
    DenseWork,
    IterationCost,
    LatencyModel,
    RooflineLatencyModel,
    RooflineParams,
    attn_pairs,
    dense_layer_work,
    weights_fit,
)
from opscale.perf.loading import LoadSource, LoadTimeParams, load_time_s
from opscale.perf.profiled import LatencyModels, ProfiledLatencyModel, latency_model_for
from opscale.perf.profiles import (
    Curve,
    ModelShape,
    NetworkProfile,
    OperatorProfile,
    ProfileError,
    ProfileLookupError,
    ProfileSet,
    load_profiles,
)

__all__ = [
    "CALIBRATED_PARAMS", "DEFAULT_INTERCONNECT_GBPS", "GENERIC", "AllReduceFit", "Catalog", "CatalogError",
    "Curve", "DenseWork", "GpuRoof", "IterationCost", "LatencyModel", "LatencyModels", "LoadSource", "LoadTimeParams",
    "ModelShape", "NetworkProfile", "OperatorProfile", "ProfileError", "ProfileLookupError", "ProfileSet",
    "ProfiledLatencyModel", "RooflineFit", "RooflineLatencyModel", "RooflineParams", "UnknownNameError",
    "attn_pairs", "calibrate", "calibrated_params", "default_catalog", "dense_layer_work", "fit_allreduce",
    "fit_roofline", "latency_model_for", "load_catalog", "load_profiles", "load_time_s", "parse_models",
    "parse_skus", "roofs_for", "weights_fit",
]
