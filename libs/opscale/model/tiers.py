"""The built-in service tiers. Scenarios may define their own; these are the defaults.

Interactive objectives follow the OpScale setting for a 7-8B model (P99 TTFT about 1-2 s, TBT 100 ms);
the latency-insensitive tier is judged only on finishing within its deadline (SageServe's NIW tier).
"""

from __future__ import annotations

from opscale.model.request import TierSpec

INTERACTIVE = TierSpec("interactive", ttft_slo_s=2.0, tbt_slo_s=0.1, priority=0)
BATCH = TierSpec("batch", ttft_slo_s=600.0, tbt_slo_s=1.0, deadline_s=3600.0, priority=1)

DEFAULT_TIERS: dict[str, TierSpec] = {t.name: t for t in (INTERACTIVE, BATCH)}
