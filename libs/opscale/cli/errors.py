"""How every `opscale` command reports bad input: one red line on stderr and exit code 2, never a
traceback."""

from __future__ import annotations

import typer


def fail(message: str) -> typer.Exit:
    """The exit to raise (`raise fail(...) from None`) after printing `error: message`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)
