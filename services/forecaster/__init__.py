"""The live forecaster process: wires the forecaster core to NATS, Redis and the supervisor (see main.py)."""
