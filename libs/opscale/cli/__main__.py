"""`python -m opscale.cli ...`: how the live supervisor and the local VM actuator start services."""

from opscale.cli.app import app

app()
