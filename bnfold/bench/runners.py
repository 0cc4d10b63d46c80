"""How one timed run is made: plain ``session.run`` on the host, or IO binding on a device.

A runner's ``run()`` returns ``(end_to_end_ns, device_ns)``. On the host the two are the same run and
``device_ns`` is None. With IO binding, inputs are copied once into device buffers bound at fixed addresses
and outputs are bound on the device; each run then times two nested spans: the device-side run alone (inputs
already there, outputs left there: what folding changes), and end to end, which adds refreshing the inputs
from host memory before and copying the outputs back after (what a caller with numpy arrays sees).
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Protocol

import numpy as np

# The CUDA EP's provider option that captures the run into a CUDA graph once and replays it.
CUDA_GRAPH_OPTION = "enable_cuda_graph"
DEVICE_PROVIDERS = frozenset({"cuda", "tensorrt"})


class Runner(Protocol):
    """One prepared session plus its inputs; ``run`` makes and times a single inference."""

    def run(self) -> tuple[int, int | None]: ...


class HostRunner:
    """``session.run`` with numpy inputs and outputs: the CPU path, timed end to end."""

    def __init__(self, session, feed: dict[str, np.ndarray]) -> None:
        self._session = session
        self._feed = feed

    def run(self) -> tuple[int, int | None]:
        start = perf_counter_ns()
        self._session.run(None, self._feed)
        return perf_counter_ns() - start, None


class IoBindingRunner:
    """Inputs copied to *device* once and bound; outputs bound on the device.

    With ``output_shapes`` given, outputs are pre-allocated at fixed addresses, which CUDA graphs need
    (a captured graph replays into the same memory); otherwise onnxruntime allocates them on the device.
    ``device="cpu"`` works too, which is how the binding logic is exercised on machines without a GPU.
    """

    def __init__(self, session, feed: dict[str, np.ndarray], *, device: str = "cuda",
                 output_shapes: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None) -> None:
        from onnxruntime import OrtValue

        self._session = session
        self._feed = feed
        self._binding = session.io_binding()
        self._inputs = {name: OrtValue.ortvalue_from_numpy(arr, device, 0) for name, arr in feed.items()}
        for name, value in self._inputs.items():
            self._binding.bind_ortvalue_input(name, value)
        # Keep pre-allocated outputs referenced: the binding does not own them.
        self._outputs = []
        for out in session.get_outputs():
            if output_shapes is None:
                self._binding.bind_output(out.name, device, 0)
                continue
            shape, dtype = output_shapes[out.name]
            value = OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)
            self._outputs.append(value)
            self._binding.bind_ortvalue_output(out.name, value)

    def run(self) -> tuple[int, int | None]:
        start = perf_counter_ns()
        for name, arr in self._feed.items():
            self._inputs[name].update_inplace(arr)  # same address, so CUDA graphs stay valid
        self._binding.synchronize_inputs()
        run_start = perf_counter_ns()
        self._session.run_with_iobinding(self._binding)
        self._binding.synchronize_outputs()
        run_end = perf_counter_ns()
        self._binding.copy_outputs_to_cpu()
        return perf_counter_ns() - start, run_end - run_start


def prime_provider(provider: str, *, threads: int | None) -> None:
    """Pay a provider's one-off start-up (CUDA context, cuDNN/TensorRT libraries, thread pools) on a tiny
    Conv model, so that it is not booked as session creation time of whichever variant happens to go first."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "prime",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = create_bench_session(model.SerializeToString(), provider=provider, opt_level="disable",
                                   threads=threads)
    session.run(None, {"x": np.ones((1, 1, 4, 4), dtype=np.float32)})


def output_shapes_on_cpu(model, feed: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Output shapes and dtypes for *feed*, from one CPU run: CUDA graphs need outputs allocated up front."""
    from bnfold.run.sessions import create_session

    session = create_session(model, provider="cpu", opt_level="all")
    names = [o.name for o in session.get_outputs()]
    arrays = session.run(None, feed)
    return {name: (tuple(arr.shape), arr.dtype) for name, arr in zip(names, arrays, strict=True)}


def create_bench_session(model: bytes | str, *, provider: str, opt_level: str, threads: int | None,
                         cuda_graph: bool = False):
    """An onnxruntime session set up for A/B timing; raises RuntimeUnavailableError when *provider* can't run.

    Options and providers as ``bnfold.run.sessions`` makes them everywhere (among them: intra-op threads that
    do not spin-wait after a run, which matters most here: two sessions alternate, and a spinning thread
    pool of one steals cores from the other's next run; on a 2-core machine that tripled the noise of an
    A/A comparison, 95% CI half-width 6.6% vs 0.9% on EfficientNet-B0). What only a benchmark needs:
    ``cuda_graph`` turns on the CUDA EP's graph capture (every node must then run on the CUDA EP;
    onnxruntime's refusal is reported as the configuration being unavailable).
    """
    import onnxruntime as ort

    from bnfold.errors import ModelLoadError, RuntimeUnavailableError
    from bnfold.run.sessions import one_line, providers_for, session_options

    wanted = providers_for(provider)
    options = session_options(opt_level, threads)
    providers: list = list(wanted)
    if cuda_graph:
        providers[0] = (wanted[0], {CUDA_GRAPH_OPTION: "1"})
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind11 exception types
        if cuda_graph:
            raise RuntimeUnavailableError(f"CUDA graph session could not be created: {one_line(exc)}") from None
        raise ModelLoadError(f"onnxruntime cannot load the model: {one_line(exc)}") from None
    if wanted[0] not in session.get_providers():
        raise RuntimeUnavailableError(f"{wanted[0]} did not initialise (onnxruntime fell back to the CPU)")
    return session
