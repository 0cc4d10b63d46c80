"""One exception family for the library, and the exit codes the CLI maps them to.

The library raises these; it never prints and never exits. The CLI turns any
``BnfoldError`` into a single ``Error: ...`` line and ``exc.exit_code``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, defined once and documented in README.md."""

    OK = 0
    FAILED = 1  # verification mismatch, or `--check` found a foldable BatchNormalization
    USAGE = 2  # bad command-line usage
    MODEL_ERROR = 3  # model unreadable, invalid or unsupported (or inputs it cannot run with)
    OUTPUT_ERROR = 4  # the output cannot be written


class BnfoldError(Exception):
    """Base of every error bnfold raises on purpose."""

    exit_code: ExitCode = ExitCode.MODEL_ERROR


class ModelLoadError(BnfoldError):
    """The file is missing, unreadable, or not an ONNX model."""


class UnsupportedModelError(BnfoldError):
    """The model is valid ONNX but uses something bnfold refuses to touch."""


class UnsafeExternalDataError(ModelLoadError):
    """External data points outside the model's folder, or is missing/short."""


class InputSpecError(BnfoldError):
    """Inputs for running the model could not be made (shapes, npz files)."""


class ShapeGuessError(InputSpecError):
    """The input shapes bnfold chose for symbolic dims were rejected by onnxruntime (or none could be
    chosen). Unlike other input errors this is not the user's mistake: optimize reports "not verified"."""


class UsageError(BnfoldError):
    """Options that contradict each other or name things that don't exist."""

    exit_code = ExitCode.USAGE


class OutputWriteError(BnfoldError):
    """The output path cannot be written."""

    exit_code = ExitCode.OUTPUT_ERROR


class VerificationFailed(BnfoldError):
    """The candidate model does not compute what the reference computes."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class RuntimeUnavailableError(BnfoldError):
    """No requested execution provider could run the model."""
