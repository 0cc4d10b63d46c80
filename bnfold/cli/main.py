"""The ``bnfold`` click group: registers one command per module and maps errors to exit codes."""

from __future__ import annotations

import sys

import click

from bnfold.cli.bench import bench_command
from bnfold.cli.check import check_command
from bnfold.cli.inspect import inspect_command
from bnfold.cli.optimize import optimize_command
from bnfold.cli.verify import verify_command
from bnfold.cli.version import version_option
from bnfold.errors import BnfoldError, ExitCode

COMMANDS = (optimize_command, verify_command, bench_command, inspect_command, check_command)


EPILOG = """\b
Exit codes: 0 ok, 1 failed (verification, check), 2 usage, 3 model error,
4 output error, 130 interrupted.
Shell completion: eval "$(_BNFOLD_COMPLETE=bash_source bnfold)" in ~/.bashrc
(zsh: zsh_source; fish: fish_source). 'bnfold COMMAND --help': options, examples.
"""


class _Group(click.Group):
    """Turns library errors into one ``Error: ...`` line and the documented exit code."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except BnfoldError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug in bnfold: still one line, unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for details",
                       err=True)
            ctx.exit(int(ExitCode.MODEL_ERROR))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@version_option
@click.option("--debug", is_flag=True, help="Show a traceback on unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fold BatchNormalization into neighbouring weights of ONNX models, exactly, and prove it."""
    ctx.obj = {"debug": debug}


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="bnfold", standalone_mode=True)
    sys.exit(0)
