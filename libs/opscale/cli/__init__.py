"""The `opscale` command line (typer): `app` is the console script's entry point; each sub-command group
lives in a module of its own (trace, forecast, loadgen, experiment), and `errors` holds the one error exit
they all use."""

from opscale.cli.app import SERVICE_NAMES, app

__all__ = ["SERVICE_NAMES", "app"]
