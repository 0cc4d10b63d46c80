"""What a user installs: metadata, the version written once, a cheap and typed `import bnfold`, every
imported distribution declared, and a clear error where onnxruntime is absent (neither extra installed).

The wheel itself is built and installed into a fresh venv by CI's second job (.ci/lowest), which also
runs this suite on the lowest declared versions.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import onnx
import pytest

import bnfold
from bnfold.version import __version__
from tests.builders import GraphBuilder

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# Where a module's import name is not its distribution's name, or it comes from an extra.
DISTRIBUTION_OF = {"google": "protobuf", "onnxruntime": "onnxruntime"}
# Makes onnxruntime absent in a fresh interpreter (sys.modules[name] = None: `import` raises ImportError),
# then runs the CLI with the arguments that follow.
WITHOUT_ONNXRUNTIME = ("import sys; sys.modules['onnxruntime'] = None; "
                       "from bnfold.cli.main import main; main(sys.argv[1:])")


def _python(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.lower().replace("_", "-")


def test_license_is_an_spdx_expression_with_its_file():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:3] == ["Apache", "License", "Version"] and "END OF TERMS AND CONDITIONS" in text
    assert "License :: OSI Approved" not in " ".join(PROJECT["classifiers"])  # superseded by `license`


def test_the_version_is_written_once():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bnfold.version.__version__"}
    assert bnfold.__version__ == __version__
    init = (REPO / "bnfold" / "__init__.py").read_text()
    assert __version__ not in init


def test_py_typed_ships_with_the_package():
    assert (REPO / "bnfold" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["bnfold"]
    assert "Typing :: Typed" in PROJECT["classifiers"]


def test_import_bnfold_stays_cheap():
    done = _python("import sys, bnfold; print(bnfold.__version__, "
                   "sorted(m for m in ('onnx', 'onnxruntime', 'numpy', 'click') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == [__version__, "[]\n"]


def _checker_imports() -> list[tuple[str, str]]:
    """(module, name) of every import under `if TYPE_CHECKING:` in bnfold/__init__.py."""
    tree = ast.parse((REPO / "bnfold" / "__init__.py").read_text())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    assert len(blocks) == 1
    return [(n.module or "", a.name) for n in blocks[0].body if isinstance(n, ast.ImportFrom) for a in n.names]


def test_checkers_see_every_public_name_as_the_object_it_is_at_run_time():
    seen = _checker_imports()
    assert sorted(name for _, name in seen) == sorted(set(bnfold.__all__) - {"__version__"})
    for module, name in seen:
        assert getattr(bnfold, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'optimise'"):
        bnfold.optimise  # noqa: B018


def test_mypy_types_the_readme_example(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the dev dependency group")
    snippet = tmp_path / "use.py"
    snippet.write_text("from typing import assert_type\nimport bnfold\nfrom bnfold.optimizer import OptimizeResult\n"
                       "from bnfold.verification.verifier import VerifyReport\n"
                       "assert_type(bnfold.optimize('m.onnx'), OptimizeResult)\n"
                       "assert_type(bnfold.verify('a.onnx', 'b.onnx'), VerifyReport)\n"
                       "bnfold.optimise('m.onnx')\n")
    # bnfold's own modules are read (silently); onnx's and numpy's are skipped, which keeps this fast.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nfollow_imports = silent\nignore_missing_imports = true\n"
                      "[mypy-onnx.*,numpy.*,ml_dtypes.*,google.*,click.*,matplotlib.*]\nfollow_imports = skip\n")
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary",
                           "--cache-dir", str(tmp_path / "cache"), str(snippet)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    # The only error is the misspelt name: without the TYPE_CHECKING imports mypy saw Any everywhere.
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'has no attribute "optimise"' in errors[0], done.stdout + done.stderr


def _third_party_imports() -> set[str]:
    found = set()
    for path in (REPO / "bnfold").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "bnfold"}


def test_every_imported_distribution_is_declared():
    declared = {_requirement_name(r) for r in PROJECT["dependencies"]}
    extras = {_requirement_name(r) for group in PROJECT["optional-dependencies"].values() for r in group}
    imported = {DISTRIBUTION_OF.get(m, m).replace("_", "-") for m in _third_party_imports()}
    assert {"onnx", "numpy", "click", "protobuf", "ml-dtypes"} <= imported
    assert imported - declared <= extras, imported - declared - extras


def test_cpu_and_gpu_runtimes_are_alternatives_never_installed_together():
    # onnxruntime and onnxruntime-gpu both install the package `onnxruntime/`: the core names neither.
    core = {_requirement_name(r) for r in PROJECT["dependencies"]}
    extras = {k: {_requirement_name(r) for r in v} for k, v in PROJECT["optional-dependencies"].items()}
    assert not core & {"onnxruntime", "onnxruntime-gpu"}
    assert extras["cpu"] == {"onnxruntime"} and extras["gpu"] == {"onnxruntime-gpu"}
    assert all(not {"onnxruntime", "onnxruntime-gpu"} <= names for names in extras.values())
    assert "dev" in PYPROJECT["dependency-groups"] and "dev" not in PROJECT["optional-dependencies"]


@pytest.fixture
def model_path(tmp_path) -> Path:
    b = GraphBuilder(seed=3)
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.node("Relu", [b.bn(b.conv(x, 4))]), shape=[1, 4, 6, 6])
    path = tmp_path / "m.onnx"
    onnx.save(b.build(), path)
    return path


@pytest.mark.parametrize("command", ["optimize", "verify", "bench"])
def test_without_onnxruntime_verifying_is_one_error_line_and_exit_3(model_path, command):
    args = [command, str(model_path)] + ([str(model_path)] if command == "verify" else [])
    done = _python(WITHOUT_ONNXRUNTIME, *args, "-o", str(model_path.with_name("out.onnx"))) \
        if command == "optimize" else _python(WITHOUT_ONNXRUNTIME, *args)
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: onnxruntime is not installed"), done.stderr
    assert "onnxruntime-gpu" in lines[0] and not model_path.with_name("out.onnx").exists()


def test_without_onnxruntime_folding_inspecting_and_checking_still_work(model_path):
    out = model_path.with_name("out.onnx")
    folded = _python(WITHOUT_ONNXRUNTIME, "optimize", "--no-verify", str(model_path), "-o", str(out))
    assert folded.returncode == 0, folded.stderr
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Conv", "Relu"]
    inspected = _python(WITHOUT_ONNXRUNTIME, "inspect", str(model_path))
    assert inspected.returncode == 0 and "1 foldable" in inspected.stdout, inspected.stdout + inspected.stderr
    checked = _python(WITHOUT_ONNXRUNTIME, "check", str(model_path), str(out))
    assert checked.returncode == 1 and "foldable BatchNormalization remain" in checked.stderr, checked.stderr


def test_without_onnxruntime_the_library_raises_its_typed_error(model_path):
    code = ("import sys; sys.modules['onnxruntime'] = None\nimport bnfold\n"
            "from bnfold.errors import RuntimeUnavailableError\ntry:\n    bnfold.verify(sys.argv[1], sys.argv[1])\n"
            "except RuntimeUnavailableError as exc:\n    print(int(exc.exit_code), type(exc.__cause__).__name__)")
    done = _python(code, str(model_path))
    assert done.stdout.split() == ["3", "ModuleNotFoundError"], done.stdout + done.stderr


def test_the_readme_names_the_declared_floors():
    declared = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["cpu"]
    floors = {_requirement_name(r): r.split(">=")[1] for r in declared}
    readme = " ".join((REPO / "README.md").read_text().split())
    python = PROJECT["requires-python"].removeprefix(">=")
    assert f"Python {python}," in readme
    for name, version in floors.items():
        assert f"{name.replace('-', '_')} {version}" in readme, (name, version)
