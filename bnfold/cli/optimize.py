"""Placeholder: `bnfold optimize` (being written)."""

import click


@click.command("optimize")
def optimize_command() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
