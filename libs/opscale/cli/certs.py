"""`opscale certs init DIR`: a development CA and one certificate per service (opscale.runtime.live.pki).
Thin: parses options, then calls the PKI module. A folder that already holds a CA is refused (exit code
2) unless --force."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opscale.cli.errors import fail as _fail

certs_app = typer.Typer(help="Certificates for mTLS between the services (development CA).",
                        no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@certs_app.callback()
def _group() -> None:
    """Certificates for mTLS between the services (development CA)."""


@certs_app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Folder to write ca.crt, ca.key and SERVICE.crt / SERVICE.key into")],
    days: Annotated[int, typer.Option(help="Validity of the CA and the certificates, in days")] = 365,
    k8s_namespace: Annotated[str, typer.Option(help="Kubernetes namespace named in the services' DNS names")]
    = "opscale",
    name: Annotated[list[str] | None, typer.Option(
        "--name", help="A further DNS name on every service certificate (repeatable)")] = None,
    force: Annotated[bool, typer.Option(help="Replace a CA already in the folder")] = False,
    readable_keys: Annotated[bool, typer.Option(
        help="Make the service keys readable by all (0644), for containers that run as another user "
             "(the docker-compose stack); the CA key stays private")] = False,
) -> None:
    """Create a development CA and a certificate per service (planner, node-agent, router, aggregator,
    forecaster, and the NATS and Redis servers), each valid for localhost, 127.0.0.1, its compose name
    and its Kubernetes Service names. Keys are written readable by the owner only."""
    from opscale.runtime.live.pki import PkiError, init_dev_pki

    try:
        issued = init_dev_pki(folder, days=days, k8s_namespace=k8s_namespace, extra_names=name or (),
                              force=force, key_mode=0o644 if readable_keys else 0o600)
    except (PkiError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"CA: {issued.ca_cert} (key {issued.ca_key}; keep it private, it signs every identity)")
    for identity, (cert, key) in issued.certs.items():
        typer.echo(f"{identity}: {cert} {key}")
