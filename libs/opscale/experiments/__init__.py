"""Experiments: build a simulated world from a scenario, run it, and report what DESIGN.md lists
(latency percentiles per tier, SLO attainment, GPU-hours, cost, energy, scaling actions, oscillations)."""
