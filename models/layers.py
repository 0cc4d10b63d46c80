"""A small graph builder that emits the node patterns real exporters produce (Conv -> BN -> Relu, residual Add).

Names follow torch.onnx's style (initializers ``layer1.0.conv1.weight``, outputs ``/layer1.0/conv1/Conv_output_0``)
so reports on these models read like reports on exported checkpoints. Parameters are drawn from one seeded
generator in call order, which is what makes equal seeds give byte-identical models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from models.params import BN_EPSILON, batch_norm_params, he_normal, linear_uniform

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime releases older than the installed onnx package
Shape = Sequence[int | str]


class GraphBuilder:
    """Accumulates nodes and initializers; every layer method returns its output tensor name. Build once."""

    def __init__(self, seed: int, dtype: type[np.floating] = np.float32) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        # Written in place: large models (ResNet-50 at ImageNet size is ~100 MB) are never copied proto-to-proto.
        self._model = onnx.ModelProto()
        self._node_names: set[str] = set()

    # -- primitives ---------------------------------------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        """Store ``array`` cast once to the model's float dtype, as raw little-endian bytes."""
        value = np.ascontiguousarray(array, dtype=self.dtype)
        tensor = self._model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        tensor.dims.extend(value.shape)
        tensor.raw_data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def op(self, op_type: str, inputs: Sequence[str], scope: str, **attrs: object) -> str:
        """Append one node named after ``scope``; raises on a duplicate so builders cannot silently alias."""
        path = "/" + scope.replace(".", "/") + "/" + op_type
        if path in self._node_names:
            raise ValueError(f"duplicate node {path}")
        self._node_names.add(path)
        output = f"{path}_output_0"
        self._model.graph.node.add().CopyFrom(helper.make_node(op_type, list(inputs), [output], name=path, **attrs))
        return output

    # -- layers with parameters ---------------------------------------------------------------------------------
    def conv(
        self,
        x: str,
        scope: str,
        c_in: int,
        c_out: int,
        kernel: int,
        *,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        spatial: int = 2,
        pad: int | None = None,
    ) -> str:
        """Square/cubic Conv with 'same'-style padding by default; He weights, optional PyTorch-style bias."""
        fan_in = (c_in // group) * kernel**spatial
        inputs = [
            x,
            self.initializer(
                f"{scope}.weight", he_normal(self.rng, (c_out, c_in // group) + (kernel,) * spatial, fan_in)
            ),
        ]
        if bias:
            inputs.append(self.initializer(f"{scope}.bias", linear_uniform(self.rng, (c_out,), fan_in)))
        p = kernel // 2 if pad is None else pad
        return self.op(
            "Conv",
            inputs,
            scope,
            dilations=[1] * spatial,
            group=group,
            kernel_shape=[kernel] * spatial,
            pads=[p] * (2 * spatial),
            strides=[stride] * spatial,
        )

    def conv_transpose(
        self,
        x: str,
        scope: str,
        c_in: int,
        c_out: int,
        *,
        kernel: int = 2,
        stride: int = 2,
        group: int = 1,
        bias: bool = True,
        spatial: int = 2,
    ) -> str:
        """Learned upsampling; ONNX weight layout is (C_in, C_out / group, k...)."""
        fan_in = (c_out // group) * kernel**spatial
        shape = (c_in, c_out // group) + (kernel,) * spatial
        inputs = [x, self.initializer(f"{scope}.weight", he_normal(self.rng, shape, fan_in))]
        if bias:
            inputs.append(self.initializer(f"{scope}.bias", linear_uniform(self.rng, (c_out,), fan_in)))
        return self.op(
            "ConvTranspose",
            inputs,
            scope,
            dilations=[1] * spatial,
            group=group,
            kernel_shape=[kernel] * spatial,
            pads=[0] * (2 * spatial),
            strides=[stride] * spatial,
        )

    def batch_norm(self, x: str, scope: str, channels: int, *, gain: float = 1.0) -> str:
        """Inference-mode BatchNormalization with trained-looking running statistics."""
        p = batch_norm_params(self.rng, channels, gain=gain)
        names = [
            self.initializer(f"{scope}.{suffix}", value)
            for suffix, value in (
                ("weight", p.scale),
                ("bias", p.bias),
                ("running_mean", p.mean),
                ("running_var", p.var),
            )
        ]
        return self.op("BatchNormalization", [x, *names], scope, epsilon=BN_EPSILON, momentum=0.9)

    def gemm(self, x: str, scope: str, n_in: int, n_out: int, *, bias: bool = True, relu_init: bool = False) -> str:
        """nn.Linear as exported: Gemm with transB=1 and weight (out, in)."""
        init = he_normal if relu_init else linear_uniform
        inputs = [x, self.initializer(f"{scope}.weight", init(self.rng, (n_out, n_in), n_in))]
        if bias:
            inputs.append(self.initializer(f"{scope}.bias", linear_uniform(self.rng, (n_out,), n_in)))
        return self.op("Gemm", inputs, scope, alpha=1.0, beta=1.0, transB=1)

    # -- parameter-free layers ----------------------------------------------------------------------------------
    def relu(self, x: str, scope: str) -> str:
        return self.op("Relu", [x], scope)

    def relu6(self, x: str, scope: str) -> str:
        """ReLU6 as opset >= 11 exporters write it: Clip with min/max constant inputs."""
        lo = self.initializer(f"{scope}.clip_min", np.array(0.0))
        hi = self.initializer(f"{scope}.clip_max", np.array(6.0))
        return self.op("Clip", [x, lo, hi], scope)

    def add(self, a: str, b: str, scope: str) -> str:
        return self.op("Add", [a, b], scope)

    def concat(self, xs: Sequence[str], scope: str) -> str:
        return self.op("Concat", xs, scope, axis=1)

    def max_pool(self, x: str, scope: str, kernel: int, stride: int, *, pad: int = 0, spatial: int = 2) -> str:
        return self.op(
            "MaxPool",
            [x],
            scope,
            kernel_shape=[kernel] * spatial,
            pads=[pad] * (2 * spatial),
            strides=[stride] * spatial,
        )

    def avg_pool(self, x: str, scope: str, kernel: int, stride: int, *, spatial: int = 2) -> str:
        return self.op("AveragePool", [x], scope, kernel_shape=[kernel] * spatial, strides=[stride] * spatial)

    def global_avg_pool_flatten(self, x: str, scope: str) -> str:
        """The classifier-head pair torch exports for adaptive_avg_pool2d(1) + flatten(1)."""
        return self.op("Flatten", [self.op("GlobalAveragePool", [x], scope)], scope, axis=1)

    # -- composite ----------------------------------------------------------------------------------------------
    def conv_bn(
        self,
        x: str,
        scope: str,
        c_in: int,
        c_out: int,
        kernel: int,
        *,
        act: str | None = "relu",
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        spatial: int = 2,
        gain: float = 1.0,
        bn_scope: str = "",
    ) -> str:
        """Conv -> BatchNormalization -> optional activation ('relu' or 'relu6'), the pattern bnfold targets."""
        y = self.conv(x, scope, c_in, c_out, kernel, stride=stride, group=group, bias=bias, spatial=spatial)
        y = self.batch_norm(y, bn_scope or f"{scope}_bn", c_out, gain=gain)
        if act == "relu":
            return self.relu(y, f"{scope}_relu")
        if act == "relu6":
            return self.relu6(y, f"{scope}_relu6")
        return y

    def build(
        self, name: str, inputs: Sequence[tuple[str, Shape]], outputs: Sequence[tuple[str, str, Shape]]
    ) -> onnx.ModelProto:
        """Finish the model; ``outputs`` are (graph name, produced tensor, shape), renamed in place."""
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        model, graph = self._model, self._model.graph
        renames = {tensor: out_name for out_name, tensor, _ in outputs}
        for node in graph.node:
            for field in (node.input, node.output):
                for i, value in enumerate(field):
                    field[i] = renames.get(value, value)
        graph.name = name
        graph.input.extend(helper.make_tensor_value_info(n, elem, list(s)) for n, s in inputs)
        graph.output.extend(helper.make_tensor_value_info(n, elem, list(s)) for n, _, s in outputs)
        model.ir_version = IR_VERSION
        model.opset_import.add(domain="", version=OPSET)
        model.producer_name, model.producer_version = "bnfold-models", "1"
        model.doc_string = f"bnfold sample model {name}: synthetic weights with trained-looking BN statistics"
        return model
