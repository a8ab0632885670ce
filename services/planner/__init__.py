"""The live planner process: wires the planner core to NATS, Redis and the supervisor (see main.py)."""
