"""opscale: a control plane that autoscales and routes LLM inference across GPU hosts and regions.

The import package holds the pure decision core (model, perf, engine, routing, forecast, planning,
cloud, traces, services), the two runtimes that host it (runtime.sim, runtime.live) and the CLI.
"""

__version__ = "0.1.0"
