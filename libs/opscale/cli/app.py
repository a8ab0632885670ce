"""The `opscale` command line. Each command is thin: it parses, then calls the experiment runner or a
service's `run()`. Heavy imports happen inside the commands so `opscale --help` stays fast."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from opscale.cli.certs import certs_app
from opscale.cli.errors import fail as _fail
from opscale.cli.experiment import experiment_app
from opscale.cli.forecast import forecast_app
from opscale.cli.heteroscale import heteroscale_app
from opscale.cli.loadgen import app as loadgen_app
from opscale.cli.trace import trace_app

SERVICE_NAMES: tuple[str, ...] = ("router", "aggregator", "forecaster", "planner", "node-agent")


class CloudChoice(StrEnum):
    """`opscale up --cloud`: the planner's VM actuator (planner.cloud.actuator)."""

    LOCAL = "local"
    K8S = "k8s"

app = typer.Typer(help="opscale: autoscale and route LLM inference across GPU hosts and regions.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(loadgen_app, name="loadgen")
app.add_typer(trace_app, name="trace")
app.add_typer(forecast_app, name="forecast")
app.add_typer(experiment_app, name="experiment")
app.add_typer(heteroscale_app, name="heteroscale")
app.add_typer(certs_app, name="certs")


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.json")] = 1,
    out: Annotated[Path, typer.Option(help="Folder for result.json and plots")] = Path("demo-out"),
    policy: Annotated[str, typer.Option(help="Planning policy (reactive, static)")] = "reactive",
    minutes: Annotated[float, typer.Option(help="Simulated minutes (one compressed day of load)", min=1)] = 120.0,
) -> None:
    """Simulate the built-in scenario (2 hours, 2 regions, 2 models) in-process: no server needed."""
    from opscale.experiments.runner import run_and_report
    from opscale.experiments.scenario import builtin_demo_scenario

    try:
        scenario = builtin_demo_scenario(seed=seed, policy=policy, duration_s=minutes * 60)
        run_and_report(scenario, out)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@app.command()
def simulate(
    trace: Annotated[Path, typer.Option(help="Trace file to replay")],
    format: Annotated[str | None, typer.Option(
        "--format", help="Trace format (see `opscale trace stats --help`); detected from the file when omitted")] = None,
    assign: Annotated[list[str] | None, typer.Option(
        help="Label requests: FIELD=VALUE[:WEIGHT],... for model, tier or region, drawn per request; "
             "repeatable, e.g. --assign model=Llama-3-8B --assign region=eu-west:1,us-east:1")] = None,
    compress: Annotated[float, typer.Option(help="Play the trace this many times faster", min=1e-6)] = 1.0,
    window: Annotated[str | None, typer.Option(
        help="Replay only arrivals in START:END trace seconds (either side may be empty); START becomes "
             "time 0, as in `opscale loadgen replay`")] = None,
    max_requests: Annotated[int | None, typer.Option(help="Replay at most this many requests of the window",
                                                     min=1)] = None,
    model: Annotated[str | None, typer.Option(
        help="Label every request with this model, as `opscale loadgen replay --model` sends them")] = None,
    policy: Annotated[str | None, typer.Option(help="Planning policy; overrides the config")] = None,
    config: Annotated[Path | None, typer.Option(help="Scenario YAML (fleet, deployments, tiers, policies)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for result.json and plots")] = Path("sim-out"),
) -> None:
    """Replay a trace file through the simulated fleet under one policy; writes result.json."""
    from opscale.cli.trace import parse_assign
    from opscale.experiments.runner import run_and_report
    from opscale.experiments.scenario import ScenarioError, load_scenario, scenario_for_trace
    from opscale.traces import TraceWindow

    if not trace.exists():
        raise _fail(f"trace file {trace} does not exist")
    try:
        labels = dict(parse_assign(spec) for spec in assign or [])
        base = load_scenario(config) if config else None
        scenario = scenario_for_trace(trace, format, base=base, seed=seed, policy=policy, assign=labels,
                                      compress=compress, window=TraceWindow.parse(window),
                                      max_requests=max_requests, model=model)
        run_and_report(scenario, out)  # its summary hints at --config when requests outrun the contexts
    except (ScenarioError, ValueError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}")],
    config: Annotated[Path | None, typer.Option(help="YAML settings file (environment variables override it)")] = None,
) -> None:
    """Run one live service against NATS and Redis until Ctrl-C or SIGTERM."""
    if service not in SERVICE_NAMES:
        raise _fail(f"unknown service {service!r}; choose one of: {', '.join(SERVICE_NAMES)}")
    from opscale_services.launcher import serve_service

    try:
        serve_service(service, config)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@app.command()
def up(
    agents: Annotated[int | None, typer.Option(help="Simulated GPU hosts (node-agents) to start (default 2); "
                                                    "with --scenario, the scenario's hosts instead")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file shared by every service")] = None,
    scenario: Annotated[Path | None, typer.Option(
        help="Scenario YAML, as `opscale simulate --config` reads it: start its fleet (a router per region, "
             "a simulated node-agent per host) with its tiers, policies and engine settings")] = None,
    port_base: Annotated[int | None, typer.Option(
        help="Put every port at an offset from this one (router API at the base); default: the documented "
             "ports (router 8000, ops 9100-9103, agents from 9111)")] = None,
    cloud: Annotated[CloudChoice | None, typer.Option(
        help="Hosts as VMs: the planner acts on its plans' VM counts through this actuator (local: node-agent "
             "processes it starts on this machine; k8s: Kubernetes node pools) instead of `up` starting "
             "node-agents; the first VMs are planner.cloud.initial_vms, or the --scenario's hosts")] = None,
) -> None:
    """Run the whole local stack as processes (router, aggregator, forecaster, planner, N node-agents)
    against NATS and Redis at the configured URLs; a process that dies is restarted with backoff (the log
    says so); Ctrl-C or SIGTERM stops it cleanly."""
    from opscale_services.launcher import run_stack

    if agents is not None and scenario is not None:
        raise _fail("--agents and --scenario exclude each other: a scenario names its own hosts")
    if agents is not None and cloud is not None:
        raise _fail("--agents and --cloud exclude each other: with --cloud the planner starts the hosts as VMs")
    if agents is not None and agents < 1:
        raise _fail("--agents must be at least 1")
    if scenario is not None and not scenario.exists():
        raise _fail(f"scenario file {scenario} does not exist")
    raise typer.Exit(code=run_stack(agents if agents is not None else 2, config, port_base=port_base,
                                    scenario=scenario, cloud=cloud.value if cloud is not None else None))
