"""Choosing how an engine loads: cold from remote storage or warm from host memory or a peer."""

from __future__ import annotations

import pytest

from opscale.perf import load_catalog
from opscale.perf.loading import (
    HostWeightCache,
    LoadTimeParams,
    choose_load,
    load_time_s,
    prefetch_time_s,
    weights_load_time_s,
)

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
LLAMA2_13B = CATALOG.model("Llama-2-13B")
LLAMA3_70B = CATALOG.model("Llama-3-70B")
H100 = CATALOG.sku("H100-80GB")
A10G = CATALOG.sku("A10G")


def test_warm_beats_cold_for_every_model_and_sku_that_fit() -> None:
    for model in CATALOG.models:
        for sku in CATALOG.skus:
            for tp in (1, 2, 4, 8):
                if model.weight_bytes >= tp * sku.gpu_memory_gb * 1e9:
                    continue
                assert load_time_s(model, sku, tp, "warm") < load_time_s(model, sku, tp, "cold")


def test_choose_load_prefers_host_memory_then_a_peer_then_storage() -> None:
    in_memory = choose_load(LLAMA3_8B, H100, 1, in_host_memory=True, peer_available=True)
    from_peer = choose_load(LLAMA3_8B, H100, 1, in_host_memory=False, peer_available=True)
    cold = choose_load(LLAMA3_8B, H100, 1, in_host_memory=False, peer_available=False)
    assert (in_memory.source, from_peer.source, cold.source) == ("warm", "warm", "cold")
    assert in_memory.reason == "weights in host memory" and from_peer.reason == "weights from a peer"
    assert cold.load_s == pytest.approx(load_time_s(LLAMA3_8B, H100, 1, "cold"))
    assert in_memory.load_s == pytest.approx(load_time_s(LLAMA3_8B, H100, 1, "warm"))
    custom = LoadTimeParams(warm_start_s=0.0, warm_transfer_gbps=16.1)
    assert choose_load(LLAMA3_8B, H100, 1, in_host_memory=True, peer_available=False,
                       params=custom).load_s == pytest.approx(LLAMA3_8B.weight_bytes / 16.1e9)


def test_host_cache_keeps_the_most_recently_loaded_models_within_its_memory() -> None:
    cache = HostWeightCache(capacity_gb=45.0)  # room for Llama-3-8B (16 GB) and Llama-2-13B (26 GB)
    assert cache.loaded(LLAMA3_8B) and cache.loaded(LLAMA2_13B)
    assert cache.models == ("Llama-3-8B", "Llama-2-13B")
    assert cache.loaded(LLAMA3_8B)  # used again: now the most recent
    assert cache.models == ("Llama-2-13B", "Llama-3-8B")
    assert cache.loaded(CATALOG.model("Llama-2-7B"))  # 13.5 GB: Llama-2-13B makes way
    assert cache.models == ("Llama-3-8B", "Llama-2-7B")
    assert not cache.loaded(LLAMA3_70B)  # 141 GB never fits; nothing is dropped for it
    assert cache.has("Llama-3-8B") and "Llama-2-7B" in cache and not cache.has("Llama-3-70B")
    cache.drop("Llama-3-8B")
    cache.drop("never-there")
    assert cache.models == ("Llama-2-7B",)
    assert cache.used_gb == pytest.approx(CATALOG.model("Llama-2-7B").weight_bytes / 1e9)
    with pytest.raises(ValueError, match="capacity_gb must be >= 0"):
        HostWeightCache(-1)


def test_weights_load_time_errors_name_what_is_loaded() -> None:
    with pytest.raises(ValueError, match="mlp of X \\(30.0 GB\\) do not fit 1 x A10G"):
        weights_load_time_s(30e9, A10G, 1, "warm", what="mlp of X")
    with pytest.raises(ValueError, match="weight bytes must be >= 0"):
        weights_load_time_s(-1, A10G, 1, "warm")
    with pytest.raises(ValueError, match="'cold' or 'warm', got 'hot'"):
        weights_load_time_s(1e9, A10G, 1, "hot")  # type: ignore[arg-type]
    assert weights_load_time_s(LLAMA3_8B.weight_bytes, H100, 1, "cold") == load_time_s(LLAMA3_8B, H100, 1, "cold")


def test_staging_fetches_weights_once_in_the_download_time_then_they_load_warm() -> None:
    cache = HostWeightCache(capacity_gb=512.0)
    timers: list[tuple[float, object]] = []
    staged: list[str] = []
    assert cache.stage(LLAMA3_8B, lambda delay, fn: timers.append((delay, fn)), on_staged=staged.append)
    assert not cache.stage(LLAMA3_8B, lambda delay, fn: timers.append((delay, fn)))  # already on its way
    [(delay, fire)] = timers
    assert delay == pytest.approx(prefetch_time_s(LLAMA3_8B)) == pytest.approx(LLAMA3_8B.weight_bytes / 1.5e9)
    assert not cache.has("Llama-3-8B")  # not until the download ends
    fire()  # type: ignore[operator]
    assert cache.has("Llama-3-8B") and staged == ["Llama-3-8B"]
    assert not cache.stage(LLAMA3_8B, lambda delay, fn: timers.append((delay, fn)))  # here already
