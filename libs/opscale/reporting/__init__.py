"""Reports that the simulator and the load generator share: `latencies` (the one builder of the TTFT, TBT
and E2E percentiles that result.json and the replay report both carry) and `latency_report` (the load
generator's full report and per-request CSV).

Pure: no network library, no clock, no runtime. The simulator (opscale.experiments) and the load
generator (opscale_loadgen) both import it, and it imports neither.
"""
