"""Placeholder: `bnfold inspect` (being written)."""

import click


@click.command("inspect")
def inspect_command() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
