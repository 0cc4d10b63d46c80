"""io: the model file on disk and back (the lowest stage).

What it does: loads a model safely (one typed error per way a file can be wrong, external data locations
refused before anything is read, lazy reads of big weights), and saves atomically (temp file + rename,
signals held across the data+model pair, early writeback), writing single files piece by piece and
external data through its own writer.

May import: the standard library, onnx, numpy and the shared modules (``bnfold.errors``, ``bnfold.reasons``,
``bnfold.report``); nothing from another stage.

Loading also refuses invalid graphs and malformed tensors before anything folds them (``graph_check``,
``tensor_check``); saving defers signals across the steps that must not split (``signals``) and clears what a
killed earlier save left behind (``stale``).

Entry points: ``load_model``, ``load_model_and_layout``, ``save_model``, ``uses_external_data``,
``has_external_data``, ``atomic_write``, ``write_text_atomic``; modules ``atomic``, ``external_data``,
``external_write``, ``lazy_data``, ``stream_write``, ``writeback``, ``model_file``, ``graph_check``,
``tensor_check``, ``signals``, ``stale``.
"""

from __future__ import annotations

from bnfold.io.model_file import (
    DEFAULT_DOMAINS,
    EXTERNAL_THRESHOLD,
    MIN_IR_VERSION,
    MIN_OPSET,
    SINGLE_FILE_LIMIT,
    SignalGuard,
    SignalTerminated,
    atomic_write,
    has_external_data,
    load_model,
    load_model_and_layout,
    model_bytes_size,
    model_folder,
    save_model,
    uses_external_data,
    write_text_atomic,
)

__all__ = [
    "DEFAULT_DOMAINS", "MIN_OPSET", "MIN_IR_VERSION", "SINGLE_FILE_LIMIT", "EXTERNAL_THRESHOLD", "SignalGuard",
    "SignalTerminated", "load_model", "load_model_and_layout", "model_folder", "save_model", "uses_external_data",
    "has_external_data", "model_bytes_size", "atomic_write", "write_text_atomic",
]
