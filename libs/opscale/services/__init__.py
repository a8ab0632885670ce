"""The sans-I/O state machine of each service: `handle(event, now_s)` and `tick(now_s)` return actions.

Both runtimes host these same objects: the simulation delivers events on a virtual clock, the live
runtime from NATS, gRPC and HTTP. Nothing here imports a network library or reads a clock.
"""
