"""``python -m models build OUTDIR [--large] [--only a,b] [--seed S]`` writes the sample models as .onnx files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

from models.registry import ALL_NAMES, DESCRIPTIONS, build
from models.summary import bn_count


def _parse_names(parser: argparse.ArgumentParser, only: str | None) -> tuple[str, ...]:
    if only is None:
        return ALL_NAMES
    names = tuple(n.strip() for n in only.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown or not names:
        parser.error(
            f"--only: unknown model(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ALL_NAMES)}"
        )
    return names


def _make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description="Build bnfold's sample ONNX models.")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="write OUTDIR/<name>.onnx for each model")
    build_cmd.add_argument("outdir", type=Path)
    build_cmd.add_argument("--large", action="store_true", help="benchmark sizes (ResNet-50 at 1x3x224x224, ~100 MB)")
    build_cmd.add_argument("--only", metavar="NAMES", help="comma-separated subset of: " + ", ".join(ALL_NAMES))
    build_cmd.add_argument("--seed", type=int, default=0)
    commands.add_parser("list", help="print each model name and what it exercises")
    return parser


def _build_all(outdir: Path, names: Sequence[str], *, large: bool, seed: int) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = build(name, large=large, seed=seed)
        path = outdir / f"{name}.onnx"
        onnx.save(model, path)
        size_mib = path.stat().st_size / 2**20
        print(f"{name:<16} {path}  {size_mib:8.2f} MiB  {bn_count(model):4d} BN")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _make_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in ALL_NAMES:
            print(f"{name:<16} {DESCRIPTIONS[name]}")
        return 0
    names = _parse_names(parser, args.only)
    try:
        _build_all(args.outdir, names, large=args.large, seed=args.seed)
    except OSError as exc:
        print(f"Error: cannot write to {args.outdir}: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
