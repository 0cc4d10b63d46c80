"""The magnitude twin of a one-node element-wise site: how far the rounding of its fed inputs can reach at its
output, computed in the local model beside the node itself (see :mod:`bnfold.verification.bound`, whose
``inputs`` term it feeds). Exposed float16 tensors are rounded copies of what onnxruntime keeps in float32
between float16 nodes it runs in float32, so this rounding is real: without a twin, a correct node recomputed
on such an input can differ by more than its own result's rounding.
"""

from __future__ import annotations

import onnx
from onnx import helper

from bnfold.verification.local_sites import Site

# Element-wise and data-movement ops whose magnitude twin is the op itself on |inputs| (Sub: Add), and ops
# whose output error is at most their input's (gain <= 1): their twin is |input|.
SAME_OP_TWIN = {"Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
                "GlobalMaxPool", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                "Sum", "Mean", "Max", "Min", "ReduceMean", "ReduceSum", "ReduceMax", "Resize", "Upsample", "Pad",
                "Slice", "Tile", "Expand", "DepthToSpace", "SpaceToDepth"}
GAIN_ONE = {"Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Softmax", "Clip", "Erf", "Gelu", "Softplus"}
# Ops whose output's relative error is at most k times their input's: the twin is k * |y| (Sqrt k = 1/2,
# Reciprocal 1, Pow |exponent|, Exp |x|: y * (1 + d) has d <= k u), computed on |inputs|.
RELATIVE_TWIN = {"Sqrt", "Reciprocal", "Pow", "Exp"}


def magnitude_name(output: str) -> str:
    return output + "@magnitude"


def magnitude_twin(site: Site, float_inputs: set[str]) -> list[onnx.NodeProto]:
    """For a one-node element-wise site: nodes computing the magnitude its fed inputs' rounding can reach at
    the output (the op on |inputs|; BatchNormalization: ``|scale * x| / sqrt(var + eps)``), into
    ``magnitude_name``. Exposed float16 tensors are rounded copies of what onnxruntime keeps in float32 between
    float16 nodes it runs in float32 (BatchNormalization after a pool or Relu), so this rounding is real."""
    if len(site.nodes) != 1 or site.linear is not None:
        return []
    node = site.nodes[0]
    if node.output[0] != site.output:
        return []
    out = magnitude_name(site.output)
    rounded = {name for name in node.input if name in float_inputs and name in site.fed}
    if node.op_type == "BatchNormalization" or node.op_type in RELATIVE_TWIN:  # twins of the data input alone
        if node.input[0] not in rounded:
            return []
        return (_batchnorm_twin if node.op_type == "BatchNormalization" else _relative_twin)(node, out)
    if node.op_type not in SAME_OP_TWIN | GAIN_ONE:
        return []
    nodes, inputs = [], []
    for i, name in enumerate(node.input):
        if name in rounded:
            nodes.append(helper.make_node("Abs", [name], [f"{out}/abs{i}"]))
            inputs.append(f"{out}/abs{i}")
        else:
            inputs.append(name)
    if not nodes:
        return []
    if node.op_type in GAIN_ONE:
        return [nodes[0], helper.make_node("Identity", [inputs[0]], [out])]
    twin = helper.make_node("Add" if node.op_type == "Sub" else node.op_type, inputs, [out])
    twin.attribute.extend(node.attribute)
    return nodes + [twin]


def _relative_twin(node: onnx.NodeProto, out: str) -> list[onnx.NodeProto]:
    """``k * |y|`` for a RELATIVE_TWIN op, in float32 (the exponent may be another type): the op on ``|x|``
    (Sqrt, Reciprocal, Pow: their own |y|), times ``|exponent|`` (Pow); ``exp(x) * |x|`` (Exp). Sqrt's k = 1/2
    and Reciprocal's 1 are covered by |y| itself."""
    x32, ax = f"{out}/x32", f"{out}/abs0"
    nodes = [helper.make_node("Cast", [node.input[0]], [x32], to=onnx.TensorProto.FLOAT),
             helper.make_node("Abs", [x32], [ax])]
    if node.op_type == "Pow":
        p32 = f"{out}/p32"
        nodes += [helper.make_node("Cast", [node.input[1]], [p32], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Pow", [ax, p32], [f"{out}/y"]), helper.make_node("Abs", [p32], [f"{out}/abs1"]),
                  helper.make_node("Mul", [f"{out}/y", f"{out}/abs1"], [out])]
    elif node.op_type == "Exp":
        nodes += [helper.make_node("Exp", [x32], [f"{out}/y"]), helper.make_node("Mul", [f"{out}/y", ax], [out])]
    else:
        nodes.append(helper.make_node(node.op_type, [ax], [out]))
    return nodes


def _batchnorm_twin(node: onnx.NodeProto, out: str) -> list[onnx.NodeProto]:
    """``|scale| * |x| / sqrt(var + eps)``: where the rounding of BatchNormalization's fed input reaches (the
    same node on |x| and |scale|, its bias and mean zeroed as ``B - B`` and ``mean - mean``)."""
    x, scale, bias, mean, var = node.input[:5]
    nodes = [helper.make_node("Abs", [x], [f"{out}/abs0"]), helper.make_node("Abs", [scale], [f"{out}/abs1"]),
             helper.make_node("Sub", [bias, bias], [f"{out}/zero2"]),
             helper.make_node("Sub", [mean, mean], [f"{out}/zero3"])]
    twin = helper.make_node("BatchNormalization", [f"{out}/abs0", f"{out}/abs1", f"{out}/zero2", f"{out}/zero3", var],
                            [out])
    twin.attribute.extend(a for a in node.attribute if a.name == "epsilon")
    return nodes + [twin]
