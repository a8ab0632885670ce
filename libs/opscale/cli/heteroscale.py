"""`opscale heteroscale`: HeteroScale's offline tools. `curate` runs Algorithm 1 (the workload-centric stress
test, PAPERS.md §3.5) for one service of a scenario in the simulator and writes the `heteroscale` policy's
per-service parameters. Thin: parses, then calls opscale.experiments.heteroscale_curation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from opscale.cli.errors import fail as _fail

heteroscale_app = typer.Typer(help="HeteroScale tools: curate a service's P/D ratio and per-instance targets.",
                              no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@heteroscale_app.callback()
def _group() -> None:
    """HeteroScale tools: curate a service's P/D ratio and per-instance targets."""


@heteroscale_app.command("curate")
def curate(
    scenario: Annotated[Path, typer.Option(help="Scenario YAML with the service's disaggregated deployment; with "
                                           "--variant, an experiment config (a path or a shipped name)")],
    model: Annotated[str, typer.Option(help="The service (a disaggregated deployment's model)")],
    out: Annotated[Path, typer.Option(help="YAML written: {model: {decode_tps_per_instance, "
                                      "prefill_missed_tps_per_instance, pd_ratio}}")] = Path("curated.yaml"),
    instances: Annotated[int, typer.Option(help="Instance budget split every way into P and D", min=2)] = 8,
    objective: Annotated[str, typer.Option(help="per_gpu or per_dollar: what the best ratio maximises "
                                           "(decode TPS within the SLO)")] = "per_gpu",
    tier: Annotated[str, typer.Option(help="The tier whose TTFT/TBT objectives the load must meet")] = "interactive",
    lengths: Annotated[str | None, typer.Option(help="Trace file of (prompt, output) pairs under the data "
                                                "directory; default: the scenario's traffic for the model")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Real data (shared/data layout); default: the "
                                                  "scenario's shaped data_dir")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the stress test's arrivals and lengths")] = 0,
    variant: Annotated[str | None, typer.Option(help="Curate for this variant of the experiment config --scenario "
                                                "(its deployments, SKUs and tiers)")] = None,
) -> None:
    """Stress-test MODEL's workload at every P/D split of INSTANCES instances (bisecting the highest rate
    meeting TTFT and TBT p99), choose the best ratio and set each per-instance target at 80% of the TPS
    there; write OUT (with the measured table in comments) and OUT's .table.json."""
    from rich.console import Console

    from opscale.experiments.comparison import ExperimentError
    from opscale.experiments.heteroscale_curation import (
        curate_service,
        curation_scenario,
        scenario_mix,
        write_curated,
    )
    from opscale.experiments.scenario import ScenarioError
    from opscale.experiments.stress import ProbeSettings, service_from_scenario

    if objective not in ("per_gpu", "per_dollar"):
        raise _fail(f"--objective: {objective!r} is neither per_gpu nor per_dollar")
    chosen: Literal["per_gpu", "per_dollar"] = "per_gpu" if objective == "per_gpu" else "per_dollar"
    console = Console()
    try:
        world = curation_scenario(scenario, variant)
        service = service_from_scenario(world, model, tier)
        mix, scenario_data = scenario_mix(world, model, lengths)
        root = data_dir if data_dir is not None else scenario_data
        if lengths is not None and (root is None or not (root / lengths).is_file()):
            raise _fail(f"--lengths: {lengths} is not a file under the data directory {root} (--data-dir)")
        sampler = mix.sampler(root)
        console.print(f"[dim]{model}: lengths {sampler.source}; {instances} instances")
        curation = curate_service(
            service, sampler, instances=instances, objective=chosen, settings=ProbeSettings(seed=seed),
            progress=lambda s, r: console.print(f"[dim]  {s.label:>5} ({s.prefill}P/{s.decode}D): "
                                                f"{r.best.rate_rps if r.best else 0:.2f} req/s within the SLO"))
        paths = write_curated([curation], out)
    except (ScenarioError, ExperimentError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(out.read_text())
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
