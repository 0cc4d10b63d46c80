import numpy as np

from bnfold import optimize
from bnfold.reasons import Reason
from tests.builders import GraphBuilder, assert_equivalent, op_count


def test_conv_bn_folds_and_keeps_names():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 8, 8])
    y = b.bn(b.conv(x, 4, name="conv1"))
    b.output(b.node("Relu", [y], name="relu"), shape=None)
    model = b.build()
    result = optimize(model, verify=False)
    assert op_count(result.model, "BatchNormalization") == 0
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert conv.name == "conv1" and conv.output[0] == y
    assert [a.rule for a in result.report.applied] == ["conv_bn"]
    assert_equivalent(model, result.model)


def test_conv_output_read_twice_is_refused():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 8, 8])
    c = b.conv(x, 4)
    y = b.bn(c)
    b.output(b.node("Add", [y, c]))
    result = optimize(b.build(), verify=False)
    assert [s.reason for s in result.report.refused] == [Reason.PRODUCER_HAS_OTHER_CONSUMERS]
    assert np.isclose(result.report.after.batchnorms, 1)
