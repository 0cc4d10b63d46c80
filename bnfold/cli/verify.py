"""Placeholder: `bnfold verify` (being written)."""

import click


@click.command("verify")
def verify_command() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
