"""The report contract: every JSON report bnfold writes carries kind, schema_version and versions and
validates against ``schemas/<kind>.schema.json`` (reports produced by the real commands on small models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli
from bnfold.report import KINDS, SCHEMA_VERSION, jsonable
from tests.builders import REPO
from tests.cli.cli_models import save_single
from tests.schema_check import validate

SCHEMAS = REPO / "schemas"


def schema(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind}.schema.json").read_text())


def assert_valid(document: dict, kind: str) -> None:
    assert document["kind"] == kind and document["schema_version"] == SCHEMA_VERSION
    assert set(document["versions"]) == {"bnfold", "onnx", "onnxruntime"}
    problems = validate(document, schema(kind))
    assert not problems, problems[:5]
    try:
        import jsonschema
    except ImportError:  # the dev-only validator is optional; the small one above always runs
        return
    jsonschema.validate(document, schema(kind))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    """One real report per kind, each from the real command; the folder batch includes a broken model."""
    tmp = tmp_path_factory.mktemp("reports")
    model, folder = save_single(tmp, "m.onnx"), tmp / "models"
    folder.mkdir()
    save_single(folder, "a.onnx")
    (folder / "broken.onnx").write_bytes(b"not a model")
    runner, out = CliRunner(), {}
    argv = {
        "optimize": ["optimize", str(model), "-o", str(tmp / "f.onnx")],
        "verify": ["verify", str(model), str(tmp / "f.onnx"), "--per-layer"],
        "inspect": ["inspect", str(model)],
        "bench": ["bench", str(model), "--warmup", "0", "--iterations", "2", "--opt-level", "disable"],
        "check": ["check", str(model), str(tmp / "f.onnx")],
        "folder": ["optimize", str(folder), "-o", str(tmp / "out"), "--jobs", "1"],
    }
    for kind, args in argv.items():
        result = runner.invoke(cli, [*args, "--json", "-"])
        assert result.exit_code in (0, 1, 3), (kind, result.output)
        out[kind] = json.loads(result.stdout)
    result = runner.invoke(cli, [*argv["folder"], "--json", str(tmp / "reports")])
    out["folder-files"] = json.loads((tmp / "reports" / "summary.json").read_text())
    out["optimize-error"] = json.loads((tmp / "reports" / "broken.onnx.json").read_text())
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_real_report_matches_its_schema(reports, kind):
    assert_valid(reports[kind], kind)


def test_folder_files_and_error_documents_match_their_schemas(reports):
    assert_valid(reports["folder-files"], "folder")
    assert isinstance(reports["folder-files"]["models"][0]["report"], str)
    assert_valid(reports["optimize-error"], "optimize")
    assert reports["optimize-error"]["exit_code"] == 3


def test_every_kind_has_a_schema():
    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(f"{k}.schema.json" for k in KINDS)


def test_the_validator_rejects_a_broken_report(reports):
    broken = dict(reports["inspect"])
    del broken["kind"]
    broken["totals"] = {**broken["totals"], "batchnorms": "2"}
    problems = validate(broken, schema("inspect"))
    assert any("missing 'kind'" in p for p in problems) and any("totals.batchnorms" in p for p in problems)


def test_non_finite_floats_are_strings_and_the_json_is_standard():
    assert jsonable({"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}) == {
        "a": "nan", "b": "inf", "c": "-inf", "d": 1.5}
    assert validate("nan", schema("verify")["$defs"]["number"], schema("verify")) == []
    assert validate("NaN", schema("verify")["$defs"]["number"], schema("verify")) != []


def test_schemas_are_valid_json_with_the_draft_named(tmp_path):
    for path in SCHEMAS.glob("*.schema.json"):
        assert json.loads(path.read_text())["$schema"].endswith("2020-12/schema"), path
    assert Path(SCHEMAS).is_dir()


def test_a_report_with_nan_errors_is_strict_json_and_valid(tmp_path):
    """A candidate whose outputs are all NaN: strict JSON (no bare NaN token), schema valid."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from tests.cli.cli_models import conv_bn_model

    reference = save_single(tmp_path, "a.onnx")
    model = conv_bn_model()
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[...] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, model.graph.initializer[0].name))
    candidate = tmp_path / "b.onnx"
    onnx.save(model, candidate)
    result = CliRunner().invoke(cli, ["verify", str(reference), str(candidate), "--json", "-"])
    assert result.exit_code == 1, result.output

    def refuse(token):
        raise AssertionError(f"bare {token} in the JSON")

    document = json.loads(result.stdout, parse_constant=refuse)
    assert document["outputs"][0]["new_nonfinite"] > 0
    assert_valid(document, "verify")


def test_a_report_holding_non_finite_floats_writes_them_as_strings():
    from dataclasses import dataclass

    from bnfold.report import ReportMixin

    @dataclass(frozen=True)
    class Numbers(ReportMixin):
        REPORT_KIND = "verify"
        values: tuple[float, ...]

    text = Numbers((math.nan, math.inf, -math.inf, 0.5)).to_json()
    document = json.loads(text, parse_constant=lambda token: pytest.fail(f"bare {token}"))
    assert document["values"] == ["nan", "inf", "-inf", 0.5] and document["kind"] == "verify"
