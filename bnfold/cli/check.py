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
from bnfold.errors import ExitCode, ModelLoadError


@click.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@rule_options
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPU count).")
@click.option("--recursive", is_flag=True, help="Descend into subfolders of folder arguments.")
@click.option("-q", "--quiet", is_flag=True, help="Print problems only.")
def check_command(paths: tuple[Path, ...], rules, skip_rules, jobs: int | None, recursive: bool,
                  quiet: bool) -> None:
    """Check that no model in PATHS (.onnx files, or folders of them) has a foldable BatchNormalization.

    Nothing is written and nothing is run in onnxruntime. Exit codes: 0 clean; 1 a foldable
    BatchNormalization remains; 2 usage; 3 a model is unreadable or invalid.
    """
    from bnfold.optimizer import select_rules

    select_rules(rules, skip_rules)
    settings = OptimizeSettings(rules=rules, skip_rules=skip_rules, verify=False, check=True)
    model_jobs = [ModelJob(path, path, None, settings) for path in _expand(paths, recursive=recursive)]
    if not model_jobs:
        if not quiet:
            click.echo("Nothing to check.")
        raise SystemExit(int(ExitCode.OK))
    code = run_models(model_jobs, jobs=jobs, json_dir=None, quiet=quiet)
    if code == ExitCode.OK and not quiet:
        click.echo("Check passed: no foldable BatchNormalization remains.")
    raise SystemExit(code)


def _expand(paths: tuple[Path, ...], *, recursive: bool) -> list[Path]:
    """Files as given (a missing one fails as its own row); folders replaced by their models (a folder
    without any is an error, as in folder mode); no repeats."""
    seen: set[Path] = set()
    expanded: list[Path] = []
    for path in paths:
        found = discover_models(path, recursive=recursive) if path.is_dir() else [path]
        if not found:
            raise ModelLoadError(no_models_message(path, recursive))
        for model in found:
            if model.absolute() not in seen:
                seen.add(model.absolute())
                expanded.append(model)
    return expanded
