"""Fill the MIP planner's inputs from the perf catalogue: SKU shapes, model memory and load times, and the
capacity table from a `CapacityFn` (normally `CapacityEstimator`, the perf model at the TBT SLO).

Prices, quotas, RTTs and demand come from elsewhere (a cloud model, forecasts); this module only turns
catalogue facts into `SkuSpec`, `PlannedModel` and `capacity_rps`. No I/O beyond what the caller's
catalogue already loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opscale.perf import Catalog
from opscale.perf.loading import LoadTimeParams, weights_load_time_s
from opscale.planning.base import CapacityFn
from opscale.planning.milp.inputs import USABLE_MEMORY_FRACTION, OptionKey, PlannedModel, SkuSpec, option_fits

DEFAULT_KV_RESERVE_TOKENS = 32_768  # KV room an instance needs beyond its weights to batch usefully


def sku_specs(catalog: Catalog, names: Iterable[str], vm_boot_s: float = 180.0) -> tuple[SkuSpec, ...]:
    return tuple(SkuSpec(s.name, s.gpus_per_vm, s.gpu_memory_gb, vm_boot_s)
                 for s in (catalog.sku(n) for n in names))


def planned_model(catalog: Catalog, catalog_name: str, *, name: str | None = None,
                  tp_options: tuple[int, ...] = (1, 2, 4, 8), kv_reserve_tokens: int = DEFAULT_KV_RESERVE_TOKENS,
                  load_params: LoadTimeParams | None = None) -> PlannedModel:
    """A `PlannedModel` for a catalogue model (optionally under another `name`, to plan several
    deployments of one architecture). Load times are the perf model's cold and warm times on the
    catalogue's largest-memory SKU at the smallest TP degree that holds the weights: one representative
    figure per model, as the planner prices loading per model."""
    spec = catalog.model(catalog_name)
    biggest = max(catalog.skus, key=lambda s: s.gpu_memory_gb)
    tp = next((t for t in sorted(tp_options) if t * biggest.gpu_memory_gb > spec.weight_bytes / 1e9), max(tp_options))
    what = f"{spec.name} weights"
    cold = weights_load_time_s(spec.weight_bytes, biggest, tp, "cold", load_params, what=what)
    warm = weights_load_time_s(spec.weight_bytes, biggest, tp, "warm", load_params, what=what)
    return PlannedModel(name or spec.name, spec.weight_bytes / 1e9, kv_reserve_tokens * spec.kv_bytes_per_token / 1e9,
                        tp_options, cold, warm)


def capacity_table(capacity: CapacityFn, models: Mapping[str, PlannedModel], catalog_names: Mapping[str, str],
                   skus: Iterable[SkuSpec], usable_memory_fraction: float = USABLE_MEMORY_FRACTION,
                   mean_prompt_tokens: float = 1024.0, mean_output_tokens: float = 256.0) -> dict[OptionKey, float]:
    """req/s per instance for every (model, SKU, tp) whose GPUs hold the weights and KV reserve.
    `catalog_names` maps a planned model's name to the catalogue model the capacity function knows."""
    table: dict[OptionKey, float] = {}
    sku_list = tuple(skus)
    for name, model in models.items():
        for sku in sku_list:
            for tp in model.tp_options:
                if not option_fits(model, sku, tp, usable_memory_fraction):
                    continue
                rate = capacity(catalog_names[name], sku.name, tp, mean_prompt_tokens, mean_output_tokens)
                if rate > 0:
                    table[(name, sku.name, tp)] = rate
    return table
