"""The house's shape: imports run one way down the stages, every stage says what it is, nothing is too big.

Stages, lowest first: shared modules, io, fold, run, verification, the entry points (optimizer,
inspection, provenance), bench, cli. A module may import from its own stage or any stage below it,
never above: the AST walk below fails on the first upward import, naming the file and the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnfold"

STAGE_OF_TOP: dict[str, int] = {
    "": 0, "errors": 0, "reasons": 0, "report": 0, "version": 0,
    "io": 1, "fold": 2, "run": 3, "verification": 4,
    "optimizer": 5, "inspection": 5, "provenance": 5,
    "bench": 6, "cli": 7, "__main__": 7,
}
SUBPACKAGES = ("io", "fold", "run", "verification", "bench", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return STAGE_OF_TOP[top]


def _imports(path: Path, own: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every bnfold import in *path* (module *own*), relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "bnfold":  # `from bnfold import x`: x may be a subpackage
                found += [(node.lineno, f"bnfold.{alias.name}") for alias in node.names]
            elif module.startswith("bnfold."):
                found.append((node.lineno, module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("bnfold")]
    return found


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _upward(path: Path, own: str) -> list[str]:
    stage = _stage(own)
    return [f"line {line}: {module}" for line, module in _imports(path, own)
            # `from bnfold import __version__` names a package attribute, not a stage
            if _top(module) in STAGE_OF_TOP and _stage(module) > stage]


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_stage_above_it(path: Path) -> None:
    assert not _upward(path, _module_name(path)), f"{path.relative_to(PACKAGE)} imports from a stage above"


def test_the_walk_sees_upward_imports_of_every_spelling(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text("from bnfold.errors import UsageError\nfrom bnfold.io import model_file\n"
                    "from bnfold.verification.compare import Tolerance\nfrom bnfold import optimizer\n"
                    "def f():\n    import bnfold.cli.main\n    from ..run import sessions\n")
    found = _upward(fake, "bnfold.fold.fake")
    assert found == ["line 3: bnfold.verification.compare", "line 4: bnfold.optimizer",
                     "line 6: bnfold.cli.main", "line 7: bnfold.run"], found


def test_fold_and_io_never_import_onnxruntime() -> None:
    for path in list((PACKAGE / "io").rglob("*.py")) + list((PACKAGE / "fold").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(name.startswith("onnxruntime") for name in names), path


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_stage_says_what_it_does_and_may_import(name: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
    assert doc and doc.startswith(f"{name}:"), f"bnfold/{name}/__init__.py must open with '{name}: ...'"
    assert "May import" in doc and "Entry points" in doc


def test_the_top_level_stays_small() -> None:
    modules = [p for p in PACKAGE.glob("*.py")]
    assert len(modules) <= 12, sorted(p.name for p in modules)
    assert all(name in STAGE_OF_TOP for name in (p.stem for p in modules) if name != "__init__")
    assert all((PACKAGE / name).is_dir() for name in SUBPACKAGES)


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= 320, f"{path.relative_to(PACKAGE)} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} is {length} lines"
