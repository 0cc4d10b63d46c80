"""The data+model pair commit of an external-data save against real signals, with a live worker thread present
(as onnxruntime's pool is in a real run: the kernel hands it the SIGTERM the main thread blocks, and Python
then runs the handler in the main thread, inside the commit). Afterwards the folder must hold one generation:
the old pair or the new pair, never new structure on old weights; and no backup link is left behind.
Also: leftovers of a bnfold process killed (SIGKILL) inside the commit are cleared, or put back, next time."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bnfold.io import model_file as io
from tests.builders import REPO


def pair_model(seed: int, size: int) -> onnx.ModelProto:
    """y = x @ w (w of size x size): the two generations differ in weights and in structure (size)."""
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "pair",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, size])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def generations(tmp_path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A folder holding the old pair, and the digests of the old and of the new pair."""
    old, new, work = tmp_path / "old", tmp_path / "new", tmp_path / "work"
    for folder, seed, size in ((old, 1, 32), (new, 2, 48), (work, 1, 32)):
        folder.mkdir()
        io.save_model(pair_model(seed, size), folder / "m.onnx", external_data=True)
    return work, digests(old), digests(new)


@pytest.fixture
def worker_thread():
    """A live thread that does not block SIGTERM: a process-directed signal may be delivered to it."""
    stop = threading.Event()
    thread = threading.Thread(target=lambda: stop.wait(30), daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join()


@pytest.mark.parametrize("after", ["link", "replace-1", "replace-2"])
def test_sigterm_inside_the_pair_commit_never_mixes_generations(generations, worker_thread, sigterm_recorded,
                                                                 monkeypatch, after):
    work, old, new = generations
    calls: dict[str, int] = {"link": 0, "replace": 0}
    real = {"link": os.link, "replace": os.replace}

    def hooked(kind):
        def call(*args, **kwargs):
            real[kind](*args, **kwargs)
            calls[kind] += 1
            if after in (kind, f"{kind}-{calls[kind]}"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # long enough for the handler to run here, if it is going to
        return call

    monkeypatch.setattr(os, "link", hooked("link"))
    monkeypatch.setattr(os, "replace", hooked("replace"))
    with pytest.raises(io.SignalTerminated):  # delivered, once the pair is in place
        io.save_model(pair_model(2, 48), work / "m.onnx", external_data=True)
    monkeypatch.undo()
    assert calls["replace"] == 2 and sigterm_recorded == []
    assert digests(work) == new  # the commit had begun: it completes, with no stray backup beside it
    assert io.load_model(work / "m.onnx").graph.initializer[0].dims == [48, 48]


KILLED_BETWEEN_RENAMES = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {repo!r})
from bnfold.io import model_file as io
from tests.io.test_pair_commit import pair_model
real = os.replace
def replace(src, dst):
    real(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)  # no handler, no unwinding: what a power cut leaves
os.replace = replace
io.save_model(pair_model(2, 48), {target!r}, external_data=True)
"""


def test_a_pair_commit_killed_between_its_renames_is_put_back_by_the_next_save(generations):
    work, old, new = generations
    script = KILLED_BETWEEN_RENAMES.format(repo=str(REPO), target=str(work / "m.onnx"))
    process = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    left = sorted(p.name for p in work.iterdir())
    assert any(name.endswith(".bak") for name in left) and any(name.endswith(".tmp") for name in left), left
    assert digests(work)["m.onnx.data"] == new["m.onnx.data"]  # mixed: new data under the old model
    from bnfold.io.stale import clear_stale

    cleared = clear_stale(work / "m.onnx", work / "m.onnx.data")
    assert len(cleared) == 2
    assert digests(work) == old  # the old data went back under the old model, and nothing else is left


def test_only_dead_processes_own_temporaries_are_cleared(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, timeout=60)
    dead_pid = int(dead.stdout)
    names = [f".m.onnx.{dead_pid}.abc123.tmp",  # ours, dead: removed
             f".m.onnx.{os.getpid()}.abc123.tmp",  # ours, alive (this very process): kept
             ".m.onnx.abc123.tmp",  # no process id: not of our naming, kept
             f".other.onnx.{dead_pid}.abc123.tmp",  # another destination: kept
             f".m.onnx.data.{dead_pid}.bak"]  # a backup whose model was renamed (no model temporary): removed
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    io.save_model(pair_model(1, 32), tmp_path / "m.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.onnx", "m.onnx.data", names[1], names[2], names[3]])
