"""Print pip constraints pinning every dependency of bnfold (and its `cpu` extra) to its declared floor.

`onnx>=1.19` becomes `onnx==1.19`, so a venv installed with these constraints holds exactly the lowest
versions pyproject.toml promises to work with; .ci/lowest runs the test suite there. With `--python` it
prints the floor of requires-python instead (`>=3.11` -> `3.11`).
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
if sys.argv[1:] == ["--python"]:
    print(re.fullmatch(r">=\s*([\d.]+)", project["requires-python"]).group(1))
    sys.exit(0)
for requirement in project["dependencies"] + project["optional-dependencies"]["cpu"]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([\w.]+)", requirement)
    if match is None:
        sys.exit(f"floors.py: {requirement!r} has no plain `>=` floor")
    print(f"{match.group(1)}=={match.group(2)}")
