"""bnfold: fold BatchNormalization into neighbouring weights of ONNX models, exactly.

Public API (the CLI is a thin skin over these):

- ``optimize(model_or_path, ...) -> OptimizeResult``  fold, verify, report
- ``verify(reference, candidate, ...) -> VerifyReport``  numerical equivalence in onnxruntime
- ``benchmark(model, ...) -> BenchReport``  latency/throughput, original vs folded
- ``inspect(model_or_path) -> InspectReport``  every BatchNormalization and whether it folds
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold.version import __version__

if TYPE_CHECKING:  # what type checkers see; at run time the names below load on first use
    from bnfold.bench.benchmark import BenchReport, benchmark
    from bnfold.fold.rules import RULE_NAMES
    from bnfold.inspection import InspectReport, inspect
    from bnfold.optimizer import FoldReport, OptimizeResult, optimize
    from bnfold.reasons import Reason
    from bnfold.verification.verifier import VerifyReport, verify

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


if not TYPE_CHECKING:  # hidden from checkers, so that a misspelt name is an error there

    def __getattr__(name: str) -> object:
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
