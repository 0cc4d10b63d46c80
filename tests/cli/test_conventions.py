"""Peer CLI conventions (issue 13): --input-shape spellings, --save-as-external-data, one -q/-v, help."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli.main import COMMANDS, cli
from bnfold.cli.options import parse_input_shape
from bnfold.cli.render import human_bytes
from tests.builders import GraphBuilder
from tests.cli.cli_models import dynamic_model, save_external, save_single, wide_model


@pytest.mark.parametrize("text, expected", [
    ("x:1x3x224x224", ("x", (1, 3, 224, 224))),
    ("x:1,3,224,224", ("x", (1, 3, 224, 224))),
    ("a:b:2,3", ("a:b", (2, 3))),
    ("1,3,224,224", ("", (1, 3, 224, 224))),
    ("1x3x8x8", ("", (1, 3, 8, 8))),
])
def test_input_shape_spellings(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("spelling", ["x:2,3,16,16", "2,3,16,16", "x:2x3x16x16"])
def test_every_input_shape_spelling_reaches_verification(tmp_path, spelling):
    model = save_single(tmp_path, model=dynamic_model())
    result = CliRunner().invoke(cli, ["verify", str(model), str(model), "--input-shape", spelling, "--json", "-"])
    assert result.exit_code == 0, result.output
    (spec,) = json.loads(result.stdout)["inputs"]
    assert spec["shape"] == [2, 3, 16, 16] and not spec["chosen"]


def test_bare_dims_on_a_model_with_two_inputs_is_a_usage_error(tmp_path):
    b = GraphBuilder()
    x, y = b.input("x", [1, 4]), b.input("y", [1, 4])
    b.output(b.node("Add", [x, y]), shape=[1, 4])
    path = save_single(tmp_path, model=b.build())
    result = CliRunner().invoke(cli, ["verify", str(path), str(path), "--input-shape", "1,4"])
    assert result.exit_code == 2
    assert "x, y" in result.stderr and "NAME:DIMS" in result.stderr


def external_locations(path) -> set[str]:
    model = onnx.load(path, load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def test_save_as_external_data_moves_weights_out(tmp_path):
    model, out = save_single(tmp_path, model=wide_model()), tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, ["optimize", str(model), "-o", str(out), "--save-as-external-data"])
    assert result.exit_code == 0, result.output
    assert external_locations(out) == {"out.onnx.data"} and (tmp_path / "out.onnx.data").is_file()


def test_no_save_as_external_data_makes_one_file_of_an_external_input(tmp_path):
    model, _ = save_external(tmp_path, model=wide_model())
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, ["optimize", str(model), "-o", str(out), "--no-save-as-external-data"])
    assert result.exit_code == 0, result.output
    assert external_locations(out) == set() and not (tmp_path / "out.onnx.data").exists()
    onnx.checker.check_model(onnx.load(out))


def test_default_keeps_the_inputs_layout(tmp_path):
    single = save_single(tmp_path, "a.onnx", model=wide_model())
    external, _ = save_external(tmp_path, "b.onnx", model=wide_model())
    runner = CliRunner()
    assert runner.invoke(cli, ["optimize", str(single), "-o", str(tmp_path / "a2.onnx")]).exit_code == 0
    assert runner.invoke(cli, ["optimize", str(external), "-o", str(tmp_path / "b2.onnx")]).exit_code == 0
    assert external_locations(tmp_path / "a2.onnx") == set()
    assert external_locations(tmp_path / "b2.onnx") == {"b2.onnx.data"}


def test_every_command_has_quiet_and_verbose_with_one_meaning():
    for command in COMMANDS:
        options = {opt: param for param in command.params for opt in getattr(param, "opts", [])}
        assert options["-q"].name == "quiet" and options["--quiet"].name == "quiet", command.name
        assert options["-v"].name == "verbose" and options["--verbose"].name == "verbose", command.name
        assert options["-q"].help == options["-q"].help and "Errors only" in options["-q"].help


def _quiet_argv(tmp_path):
    model = save_single(tmp_path)
    return {"optimize": ["optimize", str(model), "-o", str(tmp_path / "o.onnx")],
            "verify": ["verify", str(model), str(model)], "inspect": ["inspect", str(model)],
            "check": ["check", str(tmp_path / "o.onnx")],
            "bench": ["bench", str(model), "--warmup", "0", "--iterations", "1", "--opt-level", "disable"]}


def test_quiet_prints_nothing_when_all_is_well(tmp_path):
    for name, argv in _quiet_argv(tmp_path).items():  # optimize first: check reads its output
        result = CliRunner().invoke(cli, [*argv, "-q"])
        assert result.exit_code == 0, (name, result.output)
        assert result.output == "", name


def test_quiet_still_prints_the_error(tmp_path):
    result = CliRunner().invoke(cli, ["check", str(save_single(tmp_path)), "-q"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error:")


def test_group_help_lists_every_command_uncut_and_commands_have_examples():
    result = CliRunner().invoke(cli, ["--help"])
    commands = result.stdout.split("Commands:")[1].split("\n\n")[0].splitlines()
    assert len([line for line in commands if line.strip()]) == len(COMMANDS)
    assert all("..." not in line and len(line) <= 80 for line in commands)
    assert "130" in result.stdout and "_BNFOLD_COMPLETE" in result.stdout
    for command in COMMANDS:
        text = CliRunner().invoke(cli, [command.name, "--help"]).stdout
        assert "Examples:" in text and f"bnfold {command.name} " in text.split("Examples:")[1], command.name


def test_help_in_a_real_process():
    done = subprocess.run([sys.executable, "-m", "bnfold", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "optimize  Fold BatchNormalization" in done.stdout


@pytest.mark.parametrize("size, text", [(512, "512 B"), (2048, "2.0 KiB"), (5 * 2**20, "5.0 MiB"),
                                        (3 * 2**30, "3.0 GiB"), (None, "-")])
def test_sizes_are_printed_in_binary_units(size, text):
    assert human_bytes(size) == text
