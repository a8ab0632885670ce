"""Runtimes that host the decision core: `clock` (the one place time is read), `sim` (discrete-event
simulation on a virtual clock) and `live` (NATS, Redis, gRPC, OpenTelemetry; one process per service).

This package module imports nothing heavy: the decision core may import `opscale.runtime.clock`
without pulling in the live runtime's network libraries.
"""
