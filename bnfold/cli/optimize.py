"""``bnfold optimize``: fold a model (or a folder of models), verify, write atomically, report."""

from __future__ import annotations

from pathlib import Path

import click

from bnfold.bench.plan import PROVIDER_NAMES
from bnfold.cli.optimize_file import FileOutcome, OptimizeSettings, optimize_file, resolve_target
from bnfold.cli.options import freeze_initializers_option, input_options, rule_options
from bnfold.cli.render import render
from bnfold.cli.report_output import echo_human, emit_json, json_option, prepare_json
from bnfold.cli.shard import shard_option
from bnfold.cli.verbosity import verbosity_options
from bnfold.errors import ExitCode

EXAMPLES = """\b
Examples:
  bnfold optimize model.onnx                      # writes model.folded.onnx
  bnfold optimize model.onnx -o out.onnx --json report.json
  bnfold optimize model.onnx --json - | jq .applied
  bnfold optimize models/ -o folded/ --recursive --json reports/
  bnfold optimize models/ --check --shard 2/4     # one job of a 4-job CI matrix
"""


@click.command("optimize", short_help="Fold BatchNormalization, verify, write the result.", epilog=EXAMPLES)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file (default: <stem>.folded.onnx beside the input), or folder in folder mode.")
@json_option("Write the JSON report here (a folder in folder mode).")
@rule_options
@freeze_initializers_option
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime equivalence check.")
@click.option("--no-revert", is_flag=True, help="Fail instead of reverting folds whose tensors diverge.")
@click.option("--force", is_flag=True, help="Write the result even if verification fails.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) when the model could not be verified.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a foldable BatchNormalization remains.")
@click.option("--in-place", is_flag=True, help="Overwrite the input (only after the new file is complete).")
@click.option("--save-as-external-data/--no-save-as-external-data", "external_data", default=None,
              help="Weights to <output>.data beside the model, or all in one file [default: external data "
                   "only when the input had it or the model would pass protobuf's 2 GB limit].")
@click.option("--no-metadata", is_flag=True, help="Don't record provenance in metadata_props.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance for verification.")
@click.option("--rtol", type=float, default=None, help="Relative tolerance for verification.")
@click.option("--provider", type=click.Choice(PROVIDER_NAMES), default="cpu", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Folder mode: worker processes.")
@click.option("--recursive", is_flag=True, help="Folder mode: descend into subfolders.")
@shard_option
@verbosity_options
@input_options
def optimize_command(source: Path, output: Path | None, json_path: Path | None, rules, skip_rules, no_verify: bool,
                     no_revert: bool, force: bool, strict: bool, check: bool, in_place: bool,
                     external_data: bool | None, no_metadata: bool, atol, rtol, provider: str, jobs,
                     recursive: bool, shard, quiet: bool, verbose: bool, input_shapes, inputs, samples, seed,
                     value_range, freeze_initializers: bool) -> None:
    """Fold every BatchNormalization that folds exactly into its neighbours, verify, and write the result.

    Exit codes: 0 ok; 1 verification failed or --check found foldable BatchNormalization; 2 usage;
    3 model unreadable/invalid/unsupported; 4 output cannot be written; 130 interrupted.
    """
    from bnfold.optimizer import select_rules

    select_rules(rules, skip_rules)  # a bad rule list fails now, not once per model of a folder
    settings = OptimizeSettings(
        rules=rules, skip_rules=skip_rules, verify=not no_verify, revert=not no_revert, force=force,
        strict=strict, metadata=not no_metadata, check=check, in_place=in_place, inputs=inputs,
        input_shapes=dict(input_shapes), samples=samples, seed=seed, value_range=value_range, atol=atol,
        rtol=rtol, provider=provider, external_data=external_data,
        freeze_initializers=freeze_initializers)
    if source.is_dir():
        from bnfold.cli.folder import optimize_folder

        code = optimize_folder(source, output, settings, json_dir=json_path, jobs=jobs, recursive=recursive,
                               quiet=quiet, shard=shard)
        raise SystemExit(code)
    if shard is not None:
        raise click.UsageError("--shard splits a folder of models; SOURCE is one file")
    writes = [] if check else [resolve_target(source, output, in_place)]
    prepare_json(json_path, reads=[source], writes=writes, inputs=inputs)  # before the model is written
    outcome = optimize_file(source, output, settings, last=True)
    _finish(outcome, json_path, quiet=quiet, verbose=verbose, check=check)


def _finish(outcome: FileOutcome, json_path: Path | None, *, quiet: bool, verbose: bool, check: bool) -> None:
    if json_path is not None:  # a model that could not be processed gets folder mode's error document
        import json

        from bnfold.cli.batch_report import model_document

        emit_json(json_path, json.dumps(model_document(outcome), indent=2, allow_nan=False))
    if outcome.report is not None and not quiet:
        echo_human(render(outcome.report, source=outcome.source, target=outcome.target,
                          size_before=outcome.size_before, size_after=outcome.size_after, seconds=outcome.seconds,
                          verbose=verbose), json_path)
    if check and outcome.exit_code == ExitCode.OK and not quiet:
        echo_human("Check passed: no foldable BatchNormalization remains.", json_path)
    if outcome.exit_code != ExitCode.OK:
        click.echo(f"Error: {outcome.message}", err=True)
        raise SystemExit(outcome.exit_code)
    if outcome.message and not quiet:
        click.echo(f"Warning: {outcome.message}", err=True)
