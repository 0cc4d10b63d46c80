"""``--shard K/N``: N jobs of a CI matrix together cover every model exactly once, the same way each run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import PurePosixPath

import click
import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli
from bnfold.cli.shard import parse_shard, select_shard, shard_of
from tests.cli.cli_models import save_single


def test_shards_partition_the_paths_and_do_not_depend_on_order():
    paths = [PurePosixPath(f"group{i % 7}/model_{i}.onnx") for i in range(500)]
    for count in (1, 2, 3, 8):
        shards = [select_shard(paths, (k, count), str) for k in range(1, count + 1)]
        flat = [p for shard in shards for p in shard]
        assert sorted(flat) == sorted(paths) and len(flat) == len(set(flat))  # every model exactly once
        reversed_shards = [select_shard(paths[::-1], (k, count), str) for k in range(1, count + 1)]
        assert [set(s) for s in reversed_shards] == [set(s) for s in shards]
    sizes = [len(select_shard(paths, (k, 4), str)) for k in range(1, 5)]
    assert min(sizes) > 80  # a hash, not one shard taking everything


def test_adding_a_model_moves_no_other_model():
    paths = [f"m{i}.onnx" for i in range(100)]
    before = {p: shard_of(p, 5) for p in paths}
    after = {p: shard_of(p, 5) for p in [*paths, "new.onnx"]}
    assert all(after[p] == before[p] for p in paths)


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "3", "1/-2", ""])
def test_bad_shard_is_a_usage_error(text):
    with pytest.raises(click.BadParameter):
        parse_shard(text)
    result = CliRunner().invoke(cli, ["check", ".", "--shard", text])
    assert result.exit_code == 2


def test_folder_mode_shards_cover_every_model_once(tmp_path):
    source = tmp_path / "models"
    (source / "sub").mkdir(parents=True)
    names = [f"m{i}.onnx" for i in range(6)] + [f"sub/s{i}.onnx" for i in range(4)]
    for name in names:
        save_single(source, name)
    seen: list[str] = []
    for k in (1, 2, 3):
        result = CliRunner().invoke(cli, ["optimize", str(source), "--check", "--recursive", "--jobs", "1",
                                          "--shard", f"{k}/3", "--json", "-"])
        assert result.exit_code in (0, 1), result.output
        document = json.loads(result.stdout)
        assert document["shard"] == {"index": k, "count": 3}
        seen += [entry["model"] for entry in document["models"]]
    assert sorted(seen) == sorted(names)


def test_check_shards_in_real_processes_cover_every_model_once(tmp_path):
    for i in range(5):
        save_single(tmp_path, f"m{i}.onnx")
    seen: list[str] = []
    for k in (1, 2):
        done = subprocess.run([sys.executable, "-m", "bnfold", "check", str(tmp_path), "--jobs", "1",
                               "--shard", f"{k}/2", "--json", "-"], capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stderr
        seen += [PurePosixPath(e["model"]).name for e in json.loads(done.stdout)["models"]]
    assert sorted(seen) == [f"m{i}.onnx" for i in range(5)]


def test_shard_of_a_single_file_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["optimize", str(save_single(tmp_path)), "--shard", "1/2"])
    assert result.exit_code == 2 and "--shard" in result.output


def test_check_shards_do_not_depend_on_where_the_checkout_lies(tmp_path):
    """Regression: check keyed shards by the path as given, so two CI jobs whose checkouts lie in different
    folders (or that pass an absolute path) split the same models differently."""
    names = [f"m{i}.onnx" for i in range(8)]
    split = []
    for root in (tmp_path / "job-a" / "repo", tmp_path / "elsewhere" / "job-b" / "clone"):
        (root / "models").mkdir(parents=True)
        for name in names:
            save_single(root / "models", name)
        shards = []
        for k in (1, 2, 3):
            result = CliRunner().invoke(cli, ["check", str(root / "models"), "--shard", f"{k}/3", "--json", "-"])
            assert result.exit_code in (0, 1), result.output
            shards.append(sorted(PurePosixPath(e["model"]).name for e in json.loads(result.stdout)["models"]))
        split.append(shards)
    assert split[0] == split[1]
    assert sorted(sum(split[0], [])) == names
