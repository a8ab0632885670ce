"""The modules that the optional compiled build turns into C extensions with mypyc (mypy's compiler).

`OPSCALE_COMPILE=1 pip install .` compiles exactly these (see setup.py and _build_backend/); every other
install, the editable development install included, runs the Python source, which stays the reference.
The compiled build gives the same results as the source for the same seed (tests/scenarios/
test_compiled_build.py checks it) and runs the simulation about twice as fast (bench/sim_speed.py).

A module belongs here when it is on the simulation's per-request path and compiles cleanly: mypyc
cannot compile a module that defines a pydantic model (mypyc classes take no metaclass), and its
classes become native ones, which Python code can neither subclass nor patch. That is why the router
core, the aggregator, the node-agent and the latency model (each defines its pydantic config) are not
here. A class built once per request should write out its __init__: mypyc compiles that one, but
leaves the __init__ a dataclass generates interpreted (see opscale.engine.outputs). This file is read
by setup.py and the build backend without importing opscale: keep it free of imports.
"""

NATIVE_MODULES: tuple[str, ...] = (
    # the simulated engine and its layers: most of a simulation's time
    "opscale.engine.sim",
    "opscale.engine.scheduler",
    "opscale.engine.decode_run",
    "opscale.engine.kv",
    "opscale.engine.sequence",
    "opscale.engine.usage",
    "opscale.engine.outputs",
    "opscale.engine.prefix_cache",
    # the simulation shell: event loop, bus, world, and the collector of per-request outcomes
    "opscale.runtime.sim.loop",
    "opscale.runtime.sim.bus",
    "opscale.runtime.sim.world",
    "opscale.experiments.collector",
    "opscale.reporting.latencies",
    # made or read once per request by the above
    "opscale.model.request",
    "opscale.services.events",
    "opscale.services.actions",
    "opscale.routing.base",  # LoadIndex: policies' KeyedLoadIndex, a native class, derives from it
    "opscale.routing.policies",
    "opscale.stats",
)

# The compiler the build uses, pinned so that a compiled build is reproducible.
MYPY_REQUIREMENT = "mypy==2.4.1"
