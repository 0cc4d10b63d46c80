"""Loading and saving ONNX models safely.

Loading reads the file once, turns every way it can be wrong into one typed error with a one-line message,
refuses model versions bnfold cannot handle, and checks external data locations before reading any of it
(see ``bnfold.io.external_data``). Saving is atomic: a temporary file in the target folder is written, synced
and renamed over the destination, so an interrupted or failed save never leaves a half-written model.

Which "external data?" question to ask:
- ``uses_external_data(path)``: did the *file* keep tensors in separate data files? (A model loaded with
  ``load_external_data=True`` has its data in memory, so the proto alone can no longer tell.)
- ``has_external_data(model)``: does this *in-memory proto* still point at data it has not loaded?
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError

from bnfold.errors import ModelLoadError, OutputWriteError, UnsupportedModelError
from bnfold.io.atomic import (
    SignalGuard,
    SignalTerminated,
    atomic_write,
    clear_stale,
    commit_pair,
    require_folder,
    staged,
    sync_folder,
    write_text_atomic,
)
from bnfold.io.external_data import (
    check_external_data,
    has_external_data,
    holds_tensors,
    iter_tensors,
    payload_estimate,
    read_external_data,
)
from bnfold.io.external_write import externalize
from bnfold.io.graph_check import check_graph
from bnfold.io.lazy_data import DataFolder
from bnfold.io.stream_write import write_model

DEFAULT_DOMAINS = ("", "ai.onnx")  # the standard ONNX operator domain, spelled both ways

__all__ = [
    "DEFAULT_DOMAINS", "MIN_OPSET", "MIN_IR_VERSION", "SINGLE_FILE_LIMIT", "EXTERNAL_THRESHOLD", "SignalGuard",
    "SignalTerminated",
    "load_model", "load_model_and_layout", "model_folder", "save_model", "uses_external_data", "has_external_data",
    "model_bytes_size", "atomic_write", "write_text_atomic",
]

# ai.onnx opset 7 is the floor: onnxruntime, which verifies every fold, has no BatchNormalization kernel
# before opset 7 (BatchNormalization-6 fails with NOT_IMPLEMENTED) and only guarantees opsets >= 7.
MIN_OPSET = 7
MIN_IR_VERSION = 3  # the first IR version with opset imports; onnxruntime reads nothing older
# Protobuf cannot serialise a message of 2 GiB or more; keep headroom because the size is an estimate.
SINGLE_FILE_LIMIT = 2**31 - 2**26
PROTOBUF_LIMIT = 2**31  # no protobuf message at or over this size can be parsed
EXTERNAL_THRESHOLD = 1024  # tensors with more payload bytes than this go to the data file


# ---------------------------------------------------------------- loading

def load_model(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model, refusing anything malformed, unsupported or reaching outside its folder.

    Raises ModelLoadError (missing, unreadable or not ONNX), UnsupportedModelError (IR/opset out of range:
    ai.onnx opset must be within ``MIN_OPSET`` .. the installed onnx's newest) and UnsafeExternalDataError.
    External data locations are always checked for safety; with ``load_external_data`` the data files must
    also exist and be long enough, and only then are the declared byte ranges read into the tensors.
    """
    return load_model_and_layout(path, load_external_data=load_external_data)[0]


def load_model_and_layout(path: str | os.PathLike, *, load_external_data: bool = True,
                          lazy: bool = False) -> tuple[onnx.ModelProto, bool]:
    """``load_model``, plus whether the file kept tensors in external data (so a writer can keep that layout
    without parsing the file a second time).

    ``lazy`` (with ``load_external_data``): every check runs as for a full load (locations safe, data files
    present and long enough), but graph initializers stay in their data files; only the other external
    tensors (node attributes, sparse tensors) are read. Such a model reads its weights on demand through
    ``bnfold.io.lazy_data.DataFolder(model_folder(path))``, and is saved with ``save_model(...,
    source_folder=model_folder(path))``, which copies the untouched payloads without loading them.
    """
    path = Path(path)
    model = _parse(path, _read_model_file(path))
    _check_structure(path, model)
    _check_versions(path, model)
    check_graph(model, path)
    refs = check_external_data(model, model_folder(path), require_files=load_external_data)
    if load_external_data and refs:
        read_external_data([ref for ref in refs if not (lazy and ref.initializer)])
    return model, bool(refs)


def model_folder(path: str | os.PathLike) -> Path:
    """The folder a model file's external data locations are relative to."""
    return Path(path).absolute().parent


def uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at ``path`` keeps tensors in external data files (their data is not read)."""
    return load_model_and_layout(path, load_external_data=False)[1]


def _read_model_file(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{path} is a directory, not an ONNX model file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path} is not a regular file")
    if info.st_size == 0:
        raise ModelLoadError(f"not an ONNX model: {path} is empty")
    if info.st_size >= PROTOBUF_LIMIT:  # refused from its size: reading it whole first would cost as much
        raise ModelLoadError(f"{path} is {info.st_size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for one "
                             ".onnx file (a model this big keeps its weights in external data)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from None


def _parse(path: Path, data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeWarning):
        hint = " (over protobuf's 2 GB limit?)" if len(data) >= PROTOBUF_LIMIT else " (truncated, or not an .onnx file)"
        raise ModelLoadError(f"not an ONNX model: {path} does not parse as an ONNX protobuf{hint}") from None
    return model


def _check_structure(path: Path, model: onnx.ModelProto) -> None:
    # Protobuf happily parses many non-ONNX byte strings into a message of unknown fields; real models
    # always carry an IR version and a graph.
    if model.ir_version <= 0 or not model.HasField("graph"):
        missing = "IR version" if model.ir_version <= 0 else "graph"
        raise ModelLoadError(f"not an ONNX model: {path} has no {missing}")
    if not model.graph.node and not model.opset_import:
        raise ModelLoadError(f"not an ONNX model: {path} has neither nodes nor an opset import")


def _check_versions(path: Path, model: onnx.ModelProto) -> None:
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{path} uses ONNX IR version {model.ir_version}, newer than the installed onnx {onnx.__version__} "
            f"reads (up to {onnx.IR_VERSION}); upgrade onnx"
        )
    if model.ir_version < MIN_IR_VERSION:
        raise UnsupportedModelError(f"{path} uses ONNX IR version {model.ir_version}; bnfold needs {MIN_IR_VERSION}+")
    opsets = {("" if o.domain in DEFAULT_DOMAINS else o.domain): o.version for o in model.opset_import}
    default = opsets.get("")
    if default is None:
        if any(node.domain in DEFAULT_DOMAINS for node in model.graph.node):
            raise ModelLoadError(f"{path} uses standard ONNX operators but imports no ai.onnx opset")
    elif default < MIN_OPSET:
        raise UnsupportedModelError(
            f"{path} uses ai.onnx opset {default}; bnfold needs opset {MIN_OPSET}+ (onnxruntime cannot run "
            "older BatchNormalization); convert it with onnx.version_converter first"
        )
    for domain, version in opsets.items():
        newest = _newest_opset(domain)
        if newest is not None and version > newest:
            raise UnsupportedModelError(
                f"{path} uses {domain or 'ai.onnx'} opset {version}, newer than the installed onnx "
                f"{onnx.__version__} knows (up to {newest}); upgrade onnx"
            )


def _newest_opset(domain: str) -> int | None:
    """Newest opset of a domain the installed onnx defines; None for custom domains."""
    if domain == "":
        return onnx.defs.onnx_opset_version()
    version_map = getattr(onnx.defs.C, "schema_version_map", None)
    known = version_map() if version_map is not None else {}
    return known[domain][1] if domain in known else None


# ---------------------------------------------------------------- saving

def model_bytes_size(model: onnx.ModelProto) -> int:
    """Estimate of the serialised size, computed without serialising or copying tensor data.

    Tensor payloads are sized from shape and type; the rest is sized by protobuf, except nodes holding
    tensors or subgraphs, whose strings are counted instead. Errs on the large side.
    """
    size = 1024 + sum(64 + len(t.name) + 11 * len(t.dims) + payload_estimate(t) for _, t in iter_tensors(model))
    size += sum(function.ByteSize() for function in model.functions)
    return size + _structure_bytes(model.graph)


def _structure_bytes(graph: onnx.GraphProto) -> int:
    size = sum(info.ByteSize() for info in (*graph.input, *graph.output, *graph.value_info))
    for node in graph.node:
        heavy = [holds_tensors(attr) for attr in node.attribute]
        if not any(heavy):
            size += node.ByteSize()
            continue
        size += 64 + sum(len(s) + 2 for s in (node.name, node.op_type, node.domain, *node.input, *node.output))
        for attr, is_heavy in zip(node.attribute, heavy, strict=True):
            if not is_heavy:
                size += attr.ByteSize()
                continue
            graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            size += 16 + len(attr.name) + sum(_structure_bytes(g) for g in graphs)
    return size


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    serialized: bytes | None = None,
    source_folder: str | os.PathLike | None = None,
) -> None:
    """Write ``model`` to ``path`` atomically; the destination is either the old file or the complete new one.

    ``external_data``: None picks external data only when the model would pass protobuf's 2 GB limit
    (``model_bytes_size`` > ``SINGLE_FILE_LIMIT``); True moves tensors over ``EXTERNAL_THRESHOLD`` bytes to
    ``<file name>.data`` beside the model (stored location: that plain basename); False forces one file.
    ``serialized``: bytes of ``model`` the caller already has; written as given for a single-file save
    (ignored when external data is written, which needs a different serialisation).

    The output folder must exist: a missing folder raises OutputWriteError rather than being created,
    because a mistyped ``-o`` path should not silently grow new directory trees. Permission problems, a
    full disk and the like raise OutputWriteError naming the path and the reason.

    ``source_folder``: the folder a lazily loaded model (``load_model_and_layout(lazy=True)``) came from.
    Tensors it still keeps in data files there are copied, a chunk at a time, into the new data file
    (so the save needs external data); the output may replace those very files (``--in-place``). Without
    ``source_folder``, a model that still refers to unloaded external data is refused.
    """
    path = Path(path)
    require_folder(path)
    lazy = has_external_data(model)
    if lazy:
        _check_lazy_save(model, path, external_data, source_folder)
        external_data = True
    chosen = external_data is None  # then a single file is chosen only below SINGLE_FILE_LIMIT
    if chosen:
        external_data = serialized is None and model_bytes_size(model) > SINGLE_FILE_LIMIT
    if external_data:
        _save_with_external_data(model, path, DataFolder(source_folder) if lazy and source_folder is not None else None)
        return
    if serialized is not None:
        atomic_write(path, lambda handle: handle.write(serialized))
    elif not chosen and model_bytes_size(model) >= PROTOBUF_LIMIT:  # protobuf could never read it back
        raise OutputWriteError(f"cannot write {path} as a single file (over 2 GB); save it with external data")
    else:  # piece by piece: no second, model-sized copy in memory (bnfold.io.stream_write)
        atomic_write(path, lambda handle: write_model(model, handle))


def _serialize(model: onnx.ModelProto, path: Path) -> bytes:
    try:
        return model.SerializeToString()
    except (ValueError, EncodeError) as exc:
        raise OutputWriteError(
            f"cannot write {path} as a single file ({exc}); save it with external data instead"
        ) from None


def _check_lazy_save(model: onnx.ModelProto, path: Path, external_data: bool | None,
                     source_folder: str | os.PathLike | None) -> None:
    if source_folder is None:
        raise OutputWriteError(
            f"cannot write {path}: the model still refers to external data it never loaded "
            "(load it with load_external_data=True, or pass the folder it came from as source_folder)"
        )
    if external_data is False:
        raise OutputWriteError(
            f"cannot write {path} as a single file: some of its tensors are still in external data files "
            f"in {source_folder}; save it with external data"
        )


def _save_with_external_data(model: onnx.ModelProto, path: Path, source: DataFolder | None) -> None:
    data_path = path.with_name(path.name + ".data")
    clear_stale(path, data_path)  # leftovers of a killed earlier save
    # Both files are fully written before either is renamed, so a failure while writing leaves the old pair
    # as it was; the two renames happen as one step (commit_pair), so an interrupt can't split them.
    # Payloads still in the source's data files are read while the new data file is written under a
    # temporary name, so replacing those very files (in place) is safe.
    with SignalGuard(), staged(data_path) as data_stage, staged(path) as model_stage:
        shell, moved = externalize(model, data_stage.handle, data_path.name, EXTERNAL_THRESHOLD, source)  # type: ignore[arg-type]
        model_stage.handle.write(_serialize(shell, path))
        commit_pair(data_stage if moved else None, model_stage)
    sync_folder(path.parent)

