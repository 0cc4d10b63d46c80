"""The graph check run before folding (issue 14, items 6 and 8): one test per refusal, and the valid graphs
onnxruntime runs that it must keep accepting (nodes out of order, outer-scope reads, shape-less outputs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import ModelLoadError
from bnfold.io.graph_check import check_graph

FLOAT = TensorProto.FLOAT


def model(nodes, initializers=(), inputs=None, outputs=("y",), value_info=()) -> onnx.ModelProto:
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, FLOAT, None) for o in outputs],
                              list(initializers), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def refused(m: onnx.ModelProto, words: str) -> None:
    with pytest.raises(ModelLoadError, match=words) as exc:
        check_graph(m, "m.onnx")
    assert str(exc.value).startswith("invalid model m.onnx: ") and "\n" not in str(exc.value)


def weight(shape, name="w", dtype=np.float32) -> TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def if_node(then_nodes, then_out: str) -> onnx.NodeProto:
    then_branch = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info(then_out, FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", FLOAT, None)])
    return helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)


BOOL_INPUT = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
X_INPUT = helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])


def test_nodes_out_of_order_outer_reads_and_shapeless_outputs_are_accepted_and_run():
    out_of_order = model([helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Sigmoid", ["x"], ["a"])])
    check_graph(out_of_order)
    ort.InferenceSession(out_of_order.SerializeToString(), providers=["CPUExecutionProvider"])
    outer_read = model([helper.make_node("Relu", ["x"], ["r"]), if_node([helper.make_node("Neg", ["r"], ["t"])], "t")],
                       inputs=[X_INPUT, BOOL_INPUT])
    check_graph(outer_read)
    ort.InferenceSession(outer_read.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_cycle_through_a_subgraph_read_is_refused():
    # If reads 'r' inside its branch; 'r' is computed from the If's own output
    m = model([if_node([helper.make_node("Neg", ["r"], ["t"])], "t"), helper.make_node("Relu", ["y"], ["r"])],
              inputs=[X_INPUT, BOOL_INPUT])
    refused(m, "cycle")


def test_a_subgraph_reading_a_name_nothing_produces_is_refused():
    m = model([if_node([helper.make_node("Neg", ["ghost"], ["t"])], "t")], inputs=[X_INPUT, BOOL_INPUT])
    refused(m, "reads 'ghost', which nothing produces")


def test_a_node_output_that_is_also_an_initializer_is_two_producers():
    refused(model([helper.make_node("Relu", ["x"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])],
                  [weight((1,))]), "'w' has two producers: a graph input or initializer")


def test_a_graph_output_nothing_produces_is_refused():
    refused(model([helper.make_node("Relu", ["x"], ["y"])], outputs=("y", "z")), "graph output 'z'")


def test_conv_weight_rank_must_match_the_input_and_kernel_shape():
    refused(model([helper.make_node("Conv", ["x", "w"], ["y"])], [weight((4, 3, 3, 3, 3))]),
            "input 'x' has rank 4 but weight 'w' has rank 5")
    refused(model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3])], [weight((4, 3, 3, 3))]),
            "kernel_shape has 1 dims")
    check_graph(model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])], [weight((4, 3, 3, 3))]))


def test_batchnorm_with_an_integer_input_is_refused():
    params = [weight((3,), n) for n in ("s", "b", "m")] + [weight((3,), "v", np.int64)]
    refused(model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], params),
            "reads 'v' of type INT64")


def test_an_operator_onnx_checker_rejects_is_refused_in_one_line():
    refused(model([helper.make_node("Relu", ["x", "x"], ["y"])]), "input size 2")


@pytest.mark.parametrize(("tensor", "words"), [
    (TensorProto(name="t", data_type=FLOAT, dims=[2, 2], float_data=[1.0, 2.0, 3.0]),
     "needs 4 values in float_data, but holds 3"),
    (TensorProto(name="t", data_type=TensorProto.INT64, dims=[2], int64_data=[1, 2, 3]), "needs 2 values in int64"),
    (TensorProto(name="t", data_type=FLOAT, dims=[3]), "declares 3 elements .* but holds no data"),
    (TensorProto(name="t", data_type=FLOAT, dims=[-1], raw_data=b""), "negative dimension"),
    (TensorProto(name="t", data_type=FLOAT, dims=[2**40, 2**40], raw_data=b""), "impossibly large"),
    (TensorProto(name="t", data_type=TensorProto.STRING, dims=[1], raw_data=b"ab"), "cannot keep its data in raw"),
    (TensorProto(name="t", data_type=FLOAT, dims=[2], float_data=[1.0], double_data=[2.0]), "holds 1 in float_data"),
], ids=["float-count", "int64-count", "no-data", "negative-dim", "huge-dims", "string-raw", "two-fields"])
def test_malformed_tensors_are_named(tensor, words):
    refused(model([helper.make_node("Add", ["x", "t"], ["y"])], [tensor]), words)


def test_a_malformed_constant_attribute_is_named_too():
    bad = TensorProto(name="k", data_type=FLOAT, dims=[4], raw_data=b"\0" * 12)
    refused(model([helper.make_node("Constant", [], ["k"], value=bad), helper.make_node("Add", ["x", "k"], ["y"])]),
            "attribute 'value' of Constant node .* needs 16 bytes of raw data, but holds 12")
