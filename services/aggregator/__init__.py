"""The live aggregator process: wires the aggregator core to NATS, Redis and the supervisor (see main.py)."""
