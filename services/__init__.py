"""opscale_services: the live process of each service.

Each subpackage wires one sans-I/O state machine from `opscale.services` to the live runtime (NATS,
Redis, gRPC, HTTP). This is the only layer, with `opscale_loadgen` and `opscale.runtime.live`, that does
network I/O. Service subpackages do not import each other; what they share lives in `common`.
"""
