"""``bnfold check PATHS...``: fail when a model still holds a BatchNormalization that bnfold would fold.

``bnfold optimize --check`` takes one model or folder; this takes any number of them, which is what
pre-commit passes (every staged ``.onnx`` file in one call). Same engine as the folder mode.
"""

from __future__ import annotations

from pathlib import Path

import click

from bnfold.cli.folder import ModelJob, discover_models, no_models_message, run_models
from bnfold.cli.optimize_file import OptimizeSettings
from bnfold.cli.options import rule_options
from bnfold.cli.report_output import echo_human, json_option, prepare_json
from bnfold.cli.shard import select_shard, shard_option
from bnfold.cli.verbosity import verbosity_options
from bnfold.errors import ExitCode, ModelLoadError

EXAMPLES = """\b
Examples:
  bnfold check models/ --recursive
  bnfold check a.onnx b.onnx --json check.json
  bnfold check models/ --recursive --shard 3/8 --json -    # one job of an 8-job CI matrix
"""


@click.command("check", short_help="Fail if a model still has a foldable BatchNormalization.", epilog=EXAMPLES)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@rule_options
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPU count).")
@click.option("--recursive", is_flag=True, help="Descend into subfolders of folder arguments.")
@json_option("Write one JSON document (kind check) for every model checked.")
@shard_option
@verbosity_options
def check_command(paths: tuple[Path, ...], rules, skip_rules, jobs: int | None, recursive: bool,
                  json_path: Path | None, shard, quiet: bool, verbose: bool) -> None:
    """Check that no model in PATHS (.onnx files, or folders of them) has a foldable BatchNormalization.

    Nothing is written and nothing is run in onnxruntime. Exit codes: 0 clean; 1 a foldable
    BatchNormalization remains; 2 usage; 3 a model is unreadable or invalid; 130 interrupted.
    """
    from bnfold.optimizer import select_rules

    select_rules(rules, skip_rules)
    settings = OptimizeSettings(rules=rules, skip_rules=skip_rules, verify=False, check=True)
    shard_keys = _expand(paths, recursive=recursive)
    found = list(shard_keys)
    model_jobs = select_shard([ModelJob(path, path, None, settings) for path in found], shard,
                              lambda job: shard_keys[job.source])
    prepare_json(json_path, reads=found)
    if not model_jobs and json_path is None:
        if not quiet:
            click.echo("Nothing to check." if not found or shard is None
                       else f"No model falls in shard {shard[0]}/{shard[1]}.")
        raise SystemExit(int(ExitCode.OK))
    code = run_models(model_jobs, jobs=jobs, json_dir=json_path, quiet=quiet, kind="check", shard=shard)
    if code == ExitCode.OK and not quiet:
        echo_human("Check passed: no foldable BatchNormalization remains.", json_path)
    raise SystemExit(code)


def _expand(paths: tuple[Path, ...], *, recursive: bool) -> dict[Path, Path]:
    """Files as given (a missing one fails as its own row); folders replaced by their models (a folder
    without any is an error, as in folder mode); no repeats. Each maps to its shard key: its path relative
    to the folder it was found in (a file given alone: its name), so that every job of a CI matrix assigns
    it to the same shard wherever the checkout lies."""
    seen: set[Path] = set()
    expanded: dict[Path, Path] = {}
    for path in paths:
        found = discover_models(path, recursive=recursive) if path.is_dir() else [path]
        if not found:
            raise ModelLoadError(no_models_message(path, recursive))
        for model in found:
            if model.absolute() not in seen:
                seen.add(model.absolute())
                expanded[model] = model.relative_to(path) if path.is_dir() else Path(model.name)
    return expanded
