"""bnfold: fold BatchNormalization into neighbouring weights of ONNX models, exactly.

Public API (the CLI is a thin skin over these):

- ``optimize(model_or_path, ...) -> OptimizeResult``  fold, verify, report
- ``verify(reference, candidate, ...) -> VerifyReport``  numerical equivalence in onnxruntime
- ``benchmark(model, ...) -> BenchReport``  latency/throughput, original vs folded
- ``inspect(model_or_path) -> InspectReport``  every BatchNormalization and whether it folds
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "optimize",
    "verify",
    "benchmark",
    "inspect",
    "OptimizeResult",
    "FoldReport",
    "VerifyReport",
    "BenchReport",
    "InspectReport",
    "Reason",
    "RULE_NAMES",
]


def __getattr__(name: str):
    # Imported on first use so `import bnfold` stays cheap and the CLI starts fast.
    # Submodules are named apart from the functions (optimizer vs optimize) so that importing a
    # submodule never shadows the function of the same name on the package.
    if name in ("optimize", "OptimizeResult", "FoldReport"):
        from bnfold import optimizer as _m
        return getattr(_m, name)
    if name in ("verify", "VerifyReport"):
        from bnfold.verification import verifier as _m
        return getattr(_m, name)
    if name in ("benchmark", "BenchReport"):
        from bnfold.bench import benchmark as _m
        return getattr(_m, name)
    if name in ("inspect", "InspectReport"):
        from bnfold import inspection as _m
        return getattr(_m, name)
    if name == "Reason":
        from bnfold.reasons import Reason
        return Reason
    if name == "RULE_NAMES":
        from bnfold.fold.rules import RULE_NAMES
        return RULE_NAMES
    raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
