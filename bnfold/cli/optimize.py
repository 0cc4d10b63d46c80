"""``bnfold optimize``: fold a model (or a folder of models), verify, write atomically, report."""

from __future__ import annotations

from pathlib import Path

import click

from bnfold.bench.plan import PROVIDER_NAMES
from bnfold.cli.optimize_file import FileOutcome, OptimizeSettings, optimize_file
from bnfold.cli.options import freeze_initializers_option, input_options, rule_options
from bnfold.cli.render import render
from bnfold.errors import ExitCode


@click.command("optimize")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file (default: <stem>.folded.onnx beside the input), or folder in folder mode.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the JSON report here (a folder in folder mode).")
@rule_options
@freeze_initializers_option
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime equivalence check.")
@click.option("--no-revert", is_flag=True, help="Fail instead of reverting folds whose tensors diverge.")
@click.option("--force", is_flag=True, help="Write the result even if verification fails.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) when the model could not be verified.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a foldable BatchNormalization remains.")
@click.option("--in-place", is_flag=True, help="Overwrite the input (only after the new file is complete).")
@click.option("--no-metadata", is_flag=True, help="Don't record provenance in metadata_props.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance for verification.")
@click.option("--rtol", type=float, default=None, help="Relative tolerance for verification.")
@click.option("--provider", type=click.Choice(PROVIDER_NAMES), default="cpu", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Folder mode: worker processes.")
@click.option("--recursive", is_flag=True, help="Folder mode: descend into subfolders.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@input_options
def optimize_command(source: Path, output: Path | None, json_path: Path | None, rules, skip_rules, no_verify: bool,
                     no_revert: bool, force: bool, strict: bool, check: bool, in_place: bool, no_metadata: bool,
                     atol, rtol, provider: str, jobs, recursive: bool, quiet: bool, input_shapes, inputs, samples,
                     seed, value_range, freeze_initializers: bool) -> None:
    """Fold every BatchNormalization that folds exactly into its neighbours, verify, and write the result.

    Exit codes: 0 ok; 1 verification failed or --check found foldable BatchNormalization; 2 usage;
    3 model unreadable/invalid/unsupported; 4 output cannot be written.
    """
    from bnfold.optimizer import select_rules

    select_rules(rules, skip_rules)  # a bad rule list fails now, not once per model of a folder
    settings = OptimizeSettings(
        rules=rules, skip_rules=skip_rules, verify=not no_verify, revert=not no_revert, force=force,
        strict=strict, metadata=not no_metadata, check=check, in_place=in_place, inputs=inputs,
        input_shapes=dict(input_shapes), samples=samples, seed=seed, value_range=value_range, atol=atol,
        rtol=rtol, provider=provider, freeze_initializers=freeze_initializers)
    if source.is_dir():
        from bnfold.cli.folder import optimize_folder

        code = optimize_folder(source, output, settings, json_dir=json_path, jobs=jobs, recursive=recursive,
                               quiet=quiet)
        raise SystemExit(code)
    if json_path is not None:
        from bnfold.io.atomic import require_folder

        require_folder(json_path)  # an unwritable report must fail before the model is written, not after
    outcome = optimize_file(source, output, settings)
    _finish(outcome, json_path, quiet=quiet, check=check)


def _finish(outcome: FileOutcome, json_path: Path | None, *, quiet: bool, check: bool) -> None:
    if json_path is not None and outcome.report is not None:
        from bnfold.io.model_file import write_text_atomic

        write_text_atomic(json_path, outcome.report.to_json() + "\n")
    if outcome.report is not None and not quiet:
        click.echo(render(outcome.report, source=outcome.source, target=outcome.target,
                          size_before=outcome.size_before, size_after=outcome.size_after, seconds=outcome.seconds))
    if check and outcome.exit_code == ExitCode.OK and not quiet:
        click.echo("Check passed: no foldable BatchNormalization remains.")
    if outcome.exit_code != ExitCode.OK:
        click.echo(f"Error: {outcome.message}", err=True)
        raise SystemExit(outcome.exit_code)
    if outcome.message and not quiet:
        click.echo(f"Warning: {outcome.message}", err=True)
