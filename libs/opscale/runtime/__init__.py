"""Runtimes that host the decision core: `clock` (the one place time is read), `sim` (discrete-event
simulation on a virtual clock) and `live` (NATS, Redis, gRPC, OpenTelemetry; one process per service).

This package module imports nothing heavy, so importing `opscale.runtime.clock` does not pull in the
live runtime's network libraries. Only the shells import the clock: the decision core receives
`now_s` (import-linter's layers contract in pyproject.toml keeps it so).
"""
