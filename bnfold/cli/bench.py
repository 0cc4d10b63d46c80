"""Placeholder: `bnfold bench` (being written)."""

import click


@click.command("bench")
def bench_command() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
