"""``bnfold --version``: what a bug report needs (bnfold, Python, onnx, onnxruntime and its providers)."""

from __future__ import annotations

import platform

import click


def version_text() -> str:
    from bnfold.report import versions

    found = versions()
    lines = [f"bnfold, version {found['bnfold']}", f"python {platform.python_version()} ({platform.platform()})",
             f"onnx {found['onnx']}"]
    if found["onnxruntime"] is None:
        lines.append("onnxruntime not installed")
        return "\n".join(lines)
    try:
        import onnxruntime

        providers = ", ".join(onnxruntime.get_available_providers())
    except Exception as exc:  # a broken install must not hide the rest of the answer  # noqa: BLE001
        providers = f"unavailable ({type(exc).__name__}: {exc})"
    lines.append(f"onnxruntime {found['onnxruntime']} (providers: {providers})")
    return "\n".join(lines)


def _show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(version_text())
    ctx.exit(0)


version_option = click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show,
                              help="Show the bnfold, onnx and onnxruntime versions and providers, and exit.")
