"""Input specs (guessed dims recorded), seeded random feeds per dtype, and .npz files used as given."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnfold.errors import InputSpecError, UsageError
from bnfold.run.inputs import DEFAULT_BATCH, DEFAULT_DIM, InputSpec, input_specs, load_feeds, make_feeds, random_feeds


def model_with_inputs(*inputs: onnx.ValueInfoProto, initializers=()) -> onnx.ModelProto:
    """A graph whose only content is its inputs (specs read nothing else); outputs echo the first input."""
    first = inputs[0].name
    graph = helper.make_graph([helper.make_node("Identity", [first], ["y"])], "g", list(inputs),
                              [helper.make_tensor_value_info("y", inputs[0].type.tensor_type.elem_type, None)],
                              list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def info(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def test_unknown_dims_get_batch_and_default_and_are_recorded():
    missing = info("m", [4, 5])
    missing.type.tensor_type.shape.dim[1].Clear()  # a dim with neither value nor name
    model = model_with_inputs(info("x", ["N", 3, "H", -1]), info("v", [0]), missing, info("s", []))
    x, v, m, s = input_specs(model)
    assert x == InputSpec("x", "float32", (DEFAULT_BATCH, 3, DEFAULT_DIM, DEFAULT_DIM), ("N", 3, "H", -1),
                          {0: 1, 2: 64, 3: 64})
    assert v.shape == (DEFAULT_DIM,) and v.chosen == {0: DEFAULT_DIM}  # rank 1: not a batch
    assert m.shape == (4, DEFAULT_DIM) and m.declared == (4, None)
    assert s.shape == () and not s.guessed
    assert x.to_dict()["chosen"] == {"0": 1, "2": 64, "3": 64}


def test_initializers_are_not_inputs():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    model = model_with_inputs(info("x", [1, 2]), info("w", [2]), initializers=[weight])
    assert [s.name for s in input_specs(model)] == ["x"]


def test_overrides_batch_and_their_errors():
    model = model_with_inputs(info("x", ["N", 3, "H", "W"]), info("fixed", [2, 5]))
    x, fixed = input_specs(model, {"x": (2, 3, 32, 48)})
    assert x.shape == (2, 3, 32, 48) and x.chosen == {} and fixed.shape == (2, 5)
    assert input_specs(model, batch=8)[0].shape == (8, 3, 64, 64)
    with pytest.raises(InputSpecError, match="'y', not an input of the model; its inputs are: x, fixed"):
        input_specs(model, {"y": (1,)})
    with pytest.raises(InputSpecError, match="rank 2 given, but the model declares rank 4"):
        input_specs(model, {"x": (1, 3)})
    with pytest.raises(InputSpecError, match="dim 1 is 4, model fixes it at 3"):
        input_specs(model, {"x": (1, 4, 8, 8)})
    with pytest.raises(InputSpecError, match="no input has a dynamic batch"):
        input_specs(model_with_inputs(info("x", [1, 3])), batch=4)


def test_input_without_shape_needs_an_override():
    model = model_with_inputs(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    with pytest.raises(InputSpecError, match="--input-shape x:DIMS"):
        input_specs(model)
    assert input_specs(model, {"x": (2, 2)})[0].shape == (2, 2)


def test_random_feeds_per_dtype_seeded():
    model = model_with_inputs(info("f", [2, 50]), info("h", [2, 50], TensorProto.FLOAT16),
                              info("d", [2, 50], TensorProto.DOUBLE), info("b16", [2, 50], TensorProto.BFLOAT16),
                              info("i", [2, 500], TensorProto.INT64), info("u", [2, 500], TensorProto.UINT8),
                              info("t", [2, 500], TensorProto.BOOL))
    specs = input_specs(model)
    first, second = random_feeds(specs, samples=2, seed=7)
    dtypes = {k: v.dtype for k, v in first.items()}
    assert dtypes == {"f": np.float32, "h": np.float16, "d": np.float64, "b16": np.dtype(ml_dtypes.bfloat16),
                      "i": np.int64, "u": np.uint8, "t": np.bool_}
    assert set(np.unique(first["i"])) == {0, 1} and set(np.unique(first["u"])) == {0, 1}
    assert first["t"].any() and not first["t"].all()
    assert 0.5 < first["d"].std() < 1.5 and not np.array_equal(first["f"], second["f"])
    again = random_feeds(specs, samples=2, seed=7)
    assert all(np.array_equal(again[0][k], first[k]) for k in first)
    assert not np.array_equal(random_feeds(specs, samples=1, seed=8)[0]["f"], first["f"])


def test_value_range_draws_floats_uniformly():
    (feed,) = random_feeds([InputSpec("x", "float32", (1000,), (1000,))], samples=1, value_range=(2.0, 3.0))
    assert feed["x"].min() >= 2.0 and feed["x"].max() < 3.0 and feed["x"].std() > 0.2


def test_string_inputs_cannot_be_made_up():
    with pytest.raises(InputSpecError, match="pass --inputs"):
        random_feeds([InputSpec("s", "object", (2,), (2,))], samples=1)


@pytest.fixture
def specs() -> list[InputSpec]:
    model = model_with_inputs(info("x", ["N", 3, "H", "W"]), info("ids", ["N", 4], TensorProto.INT64))
    return input_specs(model)


def test_npz_file_and_folder_are_used_as_given(tmp_path, specs):
    rng = np.random.default_rng(0)
    arrays = [{"x": rng.standard_normal((2, 3, 5, 7)).astype(np.float32), "ids": np.arange(8).reshape(2, 4)}
              for _ in range(3)]
    for i, a in enumerate(arrays):
        np.savez(tmp_path / f"s{2 - i}.npz", **a)  # names sort in reverse creation order
    (one,) = load_feeds(tmp_path / "s2.npz", specs)
    assert np.array_equal(one["x"], arrays[0]["x"]) and one["ids"].dtype == np.int64
    folder = load_feeds(tmp_path, specs)
    assert [np.array_equal(f["x"], a["x"]) for f, a in zip(folder, arrays[::-1], strict=True)] == [True] * 3
    feeds, used = make_feeds(model_with_inputs(info("x", ["N", 3, "H", "W"]), info("ids", ["N", 4],
                                                                                   TensorProto.INT64)),
                             inputs=tmp_path)
    assert len(feeds) == 3 and used[0].shape == (2, 3, 5, 7) and not used[0].guessed


def test_npz_errors_are_precise(tmp_path, specs):
    x = np.zeros((1, 3, 4, 4), np.float32)
    ids = np.zeros((1, 4), np.int64)
    cases = {
        "missing": ({"x": x}, "missing 'ids'"),
        "extra": ({"x": x, "ids": ids, "z": x}, "unexpected 'z'"),
        "rank": ({"x": x[0], "ids": ids}, "input 'x' has rank 3"),
        "fixed": ({"x": np.zeros((1, 2, 4, 4), np.float32), "ids": ids}, "dim 1 is 2, model fixes it at 3"),
        "lossy": ({"x": np.full((1, 3, 4, 4), 0.1, np.float64), "ids": ids}, "is float64, the model wants float32"),
    }
    for label, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{label}.npz", **arrays)
        with pytest.raises(InputSpecError, match=message):
            load_feeds(tmp_path / f"{label}.npz", specs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputSpecError, match="no .npz files"):
        load_feeds(tmp_path / "empty", specs)


def test_lossless_dtype_differences_are_cast(tmp_path, specs):
    np.savez(tmp_path / "ok.npz", x=np.full((1, 3, 2, 2), 0.5, np.float64), ids=np.ones((1, 4), np.int32))
    (feed,) = load_feeds(tmp_path / "ok.npz", specs)
    assert feed["x"].dtype == np.float32 and feed["ids"].dtype == np.int64 and feed["x"].shape == (1, 3, 2, 2)


def test_files_and_shapes_are_exclusive(tmp_path):
    model = model_with_inputs(info("x", ["N", 2]))
    np.savez(tmp_path / "a.npz", x=np.zeros((1, 2), np.float32))
    with pytest.raises(UsageError):
        make_feeds(model, inputs=tmp_path / "a.npz", input_shapes={"x": (1, 2)})
    feeds, used = make_feeds(model, samples=3, seed=1)
    assert len(feeds) == 3 and used[0].shape == (1, 2)


# ---------------------------------------------------------------- issue 14: every dtype and rank, lazily, bounded

DRAWN_TYPES = [name for name in TensorProto.DataType.keys() if name not in ("UNDEFINED", "STRING")]


@pytest.mark.parametrize("rank_shape", [(), (3,), (2, 1, 4)], ids=["0-d", "1-d", "3-d"])
@pytest.mark.parametrize("type_name", DRAWN_TYPES)
def test_random_inputs_of_every_onnx_type_and_rank_are_arrays_of_that_dtype_and_shape(type_name, rank_shape):
    elem = getattr(TensorProto, type_name)
    (spec,) = input_specs(model_with_inputs(info("v", list(rank_shape), elem)))
    (feed,) = random_feeds([spec], samples=1, seed=3)
    value = feed["v"]
    assert type(value) is np.ndarray, type(value)  # a numpy scalar (numpy.bool) is what onnxruntime refused
    assert value.shape == rank_shape
    assert value.dtype == np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    if value.dtype.kind in "fc":
        assert np.isfinite(value).all()


RUNNABLE = ["FLOAT", "DOUBLE", "FLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
            "BOOL"]


@pytest.mark.parametrize("type_name", RUNNABLE)
def test_random_scalar_inputs_run_in_onnxruntime(type_name):
    import onnxruntime as ort

    elem = getattr(TensorProto, type_name)
    model = model_with_inputs(info("v", [], elem))
    feeds, specs = make_feeds(model, samples=2, seed=1)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in feeds:
        (echo,) = session.run(None, feed)
        assert echo.shape == () and echo.dtype == feed["v"].dtype and echo == feed["v"]


def test_random_feeds_are_drawn_one_sample_at_a_time_and_reproducibly():
    specs = [InputSpec("x", "float32", (4, 5), (4, 5)), InputSpec("c", "bool", (), ())]
    eager = [dict(feed) for feed in random_feeds(specs, samples=5, seed=11)]
    lazy = random_feeds(specs, samples=100_000, seed=11)
    assert len(lazy) == 100_000
    assert lazy._states == {}  # nothing drawn before it is used
    assert all(np.array_equal(lazy[i]["x"], eager[i]["x"]) for i in (3, 0, 4))  # indexing redraws sample i
    assert [np.array_equal(a["x"], b["x"]) for a, b in zip(lazy, eager, strict=False)] == [True] * 5
    few = random_feeds(specs, samples=6, seed=11)
    assert np.array_equal(few[-1]["x"], few[5]["x"]) and np.array_equal(few[4]["x"], eager[4]["x"])


def test_inputs_too_large_for_memory_are_refused_before_allocating():
    huge = InputSpec("x", "float32", (1, 3, 2**20, 2**20), ("N", 3, "H", "W"))
    with pytest.raises(InputSpecError, match=r"inputs too large: one sample needs about .* GiB of memory .*'x'"):
        random_feeds([huge], samples=1)
