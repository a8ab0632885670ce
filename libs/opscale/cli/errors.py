"""How every `opscale` command reports bad input: one red line on stderr and exit code 2, never a
traceback."""

from __future__ import annotations

import typer

from opscale.exit_codes import BAD_INPUT_EXIT_CODE


def fail(message: str) -> typer.Exit:
    """The exit to raise (`raise fail(...) from None`) after printing `error: message`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=BAD_INPUT_EXIT_CODE)
