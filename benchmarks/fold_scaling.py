"""Is optimize linear in model size? Times ``bnfold.optimize(verify=False)`` on chains of N x
(Conv 1x1 -> BatchNormalization -> Relu) for growing N and prints the time per fold.

    .venv/bin/python benchmarks/fold_scaling.py [N ...]     (default 250 500 1000 2000 4000)

A flat "ms per fold" column means linear; before incremental index updates it grew with N
(2,000 folds took 39 s, quadratic).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import bnfold


def chain(n: int, channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(n):
        w = numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32), f"w{i}")
        params = [rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels), rng.standard_normal(channels),
                  rng.uniform(0.1, 2.0, channels)]
        names = [f"bn{i}_{k}" for k in range(4)]
        inits.append(w)
        inits += [numpy_helper.from_array(p.astype(np.float32), name) for p, name in zip(params, names, strict=True)]
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("BatchNormalization", [f"c{i}", *names], [f"b{i}"], name=f"bn{i}"),
                  helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "chain", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main(sizes: list[int]) -> None:
    print("| folds | nodes | seconds | ms per fold |")
    print("|---|---|---|---|")
    for n in sizes:
        model = chain(n)
        started = time.perf_counter()
        result = bnfold.optimize(model, verify=False)
        seconds = time.perf_counter() - started
        assert result.report.after.batchnorms == 0
        print(f"| {n} | {3 * n} | {seconds:.2f} | {1000 * seconds / n:.3f} |")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [250, 500, 1000, 2000, 4000])
