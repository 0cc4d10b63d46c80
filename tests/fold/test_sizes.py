"""model_stats: counts and bytes over the main graph, subgraphs and Constant nodes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from bnfold.fold.sizes import model_stats


def test_bytes_follow_each_dtype_packing_and_strings_count_no_bytes():
    tensors = [
        numpy_helper.from_array(np.zeros((4, 8), dtype=np.float32), "f32"),  # 128 bytes
        helper.make_tensor("i4", TensorProto.INT4, [5], [1, 2, 3, 4, 5]),  # 5 values, 2 per byte: 3 bytes
        helper.make_tensor("s", TensorProto.STRING, [2], [b"ab", b"cd"]),  # no fixed width: 0 bytes
    ]
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.zeros(3, np.float16)))
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT16, [3])],
                              tensors)
    stats = model_stats(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert stats.parameters == 32 + 5 + 2 + 3
    assert stats.weight_bytes == 128 + 3 + 0 + 6
    assert stats.nodes == 1 and stats.batchnorms == 0
