"""The ``bnfold`` click group: registers one command per module and maps errors to exit codes.

Interrupts: SIGINT and SIGTERM unwind the whole run as KeyboardInterrupt (so temporary files and folders are
removed on the way out) and end it with one ``Error:`` line and exit 130, also when they land in the start-up
imports or cut an import short (which Python may report as ImportError).
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130


def _interrupted_exit(signum: int = signal.SIGINT) -> None:
    """One line, exit 130, nothing else run: for interrupts where nothing has been written yet (start-up)."""
    what = "interrupted" if signum == signal.SIGINT else f"terminated by {signal.Signals(signum).name}"
    try:
        sys.stderr.write(f"Error: {what}\n")
        sys.stderr.flush()
    finally:
        os._exit(INTERRUPTED)


# SIGTERM during the imports below: nothing is written yet, so leave at once with one line (restored after)
_STARTUP_SIGTERM = signal.getsignal(signal.SIGTERM)
if _STARTUP_SIGTERM is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, lambda signum, frame: _interrupted_exit(signum))

try:  # the imports take seconds (onnx, numpy): a Ctrl-C here must not print a traceback
    import click

    from bnfold.cli.bench import bench_command
    from bnfold.cli.check import check_command
    from bnfold.cli.inspect import inspect_command
    from bnfold.cli.optimize import optimize_command
    from bnfold.cli.verify import verify_command
    from bnfold.cli.version import version_option
    from bnfold.errors import BnfoldError, ExitCode
    from bnfold.io.signals import SignalGuard, ignore_termination_signals
except KeyboardInterrupt:
    _interrupted_exit()
if _STARTUP_SIGTERM is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

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
        # run as the process (main): once the command is over, signals are ignored until it exits
        guard = SignalGuard((signal.SIGINT, signal.SIGTERM), then_ignore=_STATE["own_process"])
        with guard:
            try:
                return super().invoke(ctx)
            except BnfoldError as exc:
                if guard.received is not None:  # an interrupt cut an import short: "not installed" is false
                    _report_interrupt(ctx, guard.received)
                click.echo(f"Error: {exc}", err=True)
                ctx.exit(int(exc.exit_code))
            except KeyboardInterrupt as exc:
                _report_interrupt(ctx, getattr(exc, "signum", signal.SIGINT))
            except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
                raise
            except Exception as exc:  # a bug in bnfold: still one line, unless --debug
                if guard.received is not None:  # an interrupt cut something short (an import, say)
                    _report_interrupt(ctx, guard.received)
                if ctx.obj and ctx.obj.get("debug"):
                    raise
                click.echo(f"Error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for details",
                           err=True)
                ctx.exit(int(ExitCode.MODEL_ERROR))


_STATE = {"interrupted": False, "own_process": False}


def _report_interrupt(ctx: click.Context, signum: int) -> None:
    _STATE["interrupted"] = True
    click.echo("Error: interrupted" if signum == signal.SIGINT else f"Error: terminated by "
               f"{signal.Signals(signum).name}", err=True)
    ctx.exit(INTERRUPTED)


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
    _STATE["own_process"] = True
    try:
        cli.main(args=argv, prog_name="bnfold", standalone_mode=True)
    except SystemExit:
        ignore_termination_signals()  # the run is over: a signal now could only cut its shutdown short
        if _STATE["interrupted"]:  # cleaned up already; an import cut short may leave native state unsafe
            sys.stdout.flush()     # to finalise, so leave without running it
            sys.stderr.flush()
            os._exit(INTERRUPTED)
        raise
    except KeyboardInterrupt as exc:  # outside the group's guard (option parsing): nothing written yet
        _interrupted_exit(getattr(exc, "signum", signal.SIGINT))
    ignore_termination_signals()
    sys.exit(0)
