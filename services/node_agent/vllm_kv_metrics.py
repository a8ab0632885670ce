"""The node-agent's reading of its vLLM servers' KV events on its /metrics, per instance: what the reader
decoded and dropped (opscale.openai.vllm_kv_events.VllmKvStats, and waits past the bound) and what the
renamer renamed and dropped (opscale.openai.vllm_kv_rekey.KvRekeyStats), read at each scrape from the
subscribers, so nothing is counted twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from opscale_services.node_agent.vllm_kv_sub import VllmKvSubscriber


class VllmKvCollector(Collector):
    """`opscale_node_agent_vllm_kv_read_total{instance_id, outcome}` (messages, events, malformed, gaps,
    restarts, ..., pending_overflow) and `opscale_node_agent_vllm_kv_renamed_total{instance_id, outcome}`
    (stored, removed, unknown_parent, unknown_removal, block_size_mismatch, overflow, ...)."""

    def __init__(self, subscribers: Callable[[], Mapping[str, VllmKvSubscriber]]) -> None:
        self.subscribers = subscribers

    def collect(self) -> Iterator[CounterMetricFamily]:
        read = CounterMetricFamily("opscale_node_agent_vllm_kv_read", "vLLM KV event messages and events read "
                                   "from each server, and what was dropped, by outcome", labels=["instance_id", "outcome"])
        renamed = CounterMetricFamily("opscale_node_agent_vllm_kv_renamed", "vLLM KV blocks renamed into opscale's "
                                      "token hashes, and what was dropped, by outcome",
                                      labels=["instance_id", "outcome"])
        for instance_id, sub in sorted(self.subscribers().items()):
            for f in dataclasses.fields(sub.reader.stats):
                read.add_metric([instance_id, f.name], float(getattr(sub.reader.stats, f.name)))
            read.add_metric([instance_id, "pending_overflow"], float(sub.overflows))
            for f in dataclasses.fields(sub.rekeyer.stats):
                renamed.add_metric([instance_id, f.name], float(getattr(sub.rekeyer.stats, f.name)))
        yield read
        yield renamed
