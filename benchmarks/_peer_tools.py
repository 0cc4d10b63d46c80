"""The tools ``peer_compare.py`` puts side by side, each as ``ModelProto -> ModelProto``.

Every tool gets its own copy of the model (some optimise in place) and runs with stdout silenced at the file
descriptor level: several peers print tables or progress from C++ code, which would mix into the report that
``peer_compare.py`` prints. A tool that is not installed is reported as such, not skipped silently.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

Transform = Callable[[onnx.ModelProto], onnx.ModelProto]


@dataclass(frozen=True)
class Tool:
    key: str  # column header
    label: str  # legend: what exactly runs
    module: str  # import name; the tool is "not installed" when it is missing
    make: Callable[[], Transform]  # imports lazily and returns the transform

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


def _bnfold() -> Transform:
    import bnfold

    return lambda model: bnfold.optimize(model, verify=False).model


def _onnxoptimizer() -> Transform:
    import onnxoptimizer

    return lambda model: onnxoptimizer.optimize(model, ["fuse_bn_into_conv"])


def _onnxsim() -> Transform:
    import onnxsim

    return lambda model: onnxsim.simplify(model)[0]


def _onnxslim() -> Transform:
    import onnxslim

    return lambda model: onnxslim.slim(model)


def _onnxscript() -> Transform:
    """The optimizer torch.onnx's dynamo exporter runs by default; it returns what it is given (proto or IR)."""
    import onnxscript.optimizer

    def run(model: onnx.ModelProto) -> onnx.ModelProto:
        result = onnxscript.optimizer.optimize(model)
        if isinstance(result, onnx.ModelProto):
            return result
        import onnx_ir

        return onnx_ir.serde.serialize_model(result)
    return run


def _ort_basic() -> Transform:
    """onnxruntime's level-1 (basic) graph transformers, saved offline; the same code that fuses at load time."""
    import onnxruntime as ort

    def run(model: onnx.ModelProto) -> onnx.ModelProto:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory() as folder:
            options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            return onnx.load(options.optimized_model_filepath)
    return run


TOOLS: tuple[Tool, ...] = (
    Tool("bnfold", "bnfold.optimize(model, verify=False).model", "bnfold", _bnfold),
    Tool("onnxoptimizer", 'onnxoptimizer.optimize(model, ["fuse_bn_into_conv"])', "onnxoptimizer", _onnxoptimizer),
    Tool("onnxsim", "onnxsim.simplify(model)[0]", "onnxsim", _onnxsim),
    Tool("onnxslim", "onnxslim.slim(model)", "onnxslim", _onnxslim),
    Tool("onnxscript", "onnxscript.optimizer.optimize(model) (torch.onnx dynamo exporter's default)",
         "onnxscript", _onnxscript),
    Tool("ORT basic", "onnxruntime InferenceSession, ORT_ENABLE_BASIC, optimized_model_filepath, loaded back",
         "onnxruntime", _ort_basic),
)


@dataclass(frozen=True)
class Outcome:
    """A tool's result on one model: the model, or why there is none."""

    model: onnx.ModelProto | None
    failure: str | None = None  # "not installed" / "crashed: ..."
    note: str = ""  # extra fact worth a cell (bnfold's own verification status)


def one_line(exc: BaseException, limit: int = 110) -> str:
    """The first line of an error, without onnxruntime's status prefix, short enough for a table cell."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = f"{type(exc).__name__}: {text}".replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def silenced_stdout() -> Iterator[None]:
    """Send fd 1 (and sys.stdout) to stderr while a tool runs, so only the report reaches stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def apply(tool: Tool, transforms: dict[str, Transform | str], model: onnx.ModelProto) -> Outcome:
    """Run *tool* on a private copy of *model*; crashes become one line, never an exception."""
    if tool.key not in transforms:
        try:
            transforms[tool.key] = tool.make() if tool.installed() else "not installed"
        except Exception as exc:  # an import that fails is as good as absent, but say why
            transforms[tool.key] = f"not installed ({one_line(exc, 60)})"
    transform = transforms[tool.key]
    if isinstance(transform, str):
        return Outcome(None, transform)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        with silenced_stdout():
            result = transform(copy)
    except Exception as exc:
        return Outcome(None, "crashed: " + one_line(exc))
    if not isinstance(result, onnx.ModelProto):
        return Outcome(None, f"crashed: returned {type(result).__name__}, not a ModelProto")
    return Outcome(result)


def bnfold_verified(model: onnx.ModelProto) -> Outcome:
    """bnfold with its own verification (may revert folds); the note is its status, e.g. "passed"."""
    import bnfold
    from bnfold.errors import VerificationFailed

    try:
        with silenced_stdout():
            result = bnfold.optimize(model)
    except VerificationFailed as exc:
        return Outcome(None, "verification failed: " + one_line(exc))
    except Exception as exc:
        return Outcome(None, "crashed: " + one_line(exc))
    report = result.report
    reverted = f", {len(report.reverted)} reverted" if report.reverted else ""
    return Outcome(result.model, note=f"{report.verification.status}{reverted}")
