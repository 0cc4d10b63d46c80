"""onnxruntime sessions made one way for verify and bench.

Everything that runs a model goes through :func:`create_session`, so provider names, optimisation
levels, thread counts and error messages are the same everywhere. Two promises keep big models cheap:

- a path is handed to onnxruntime as a path (no parse, no re-serialisation) unless intermediate
  tensors must be exposed as extra outputs; then only the graph is parsed (external data stays on
  disk, found through the model's folder) and serialised once;
- a ``ModelProto`` (or a :class:`~bnfold.run.lending.DetachedModel`) is never serialised whole: its
  structure is, and its large weights are lent to onnxruntime as arrays (:mod:`bnfold.run.lending`);
  only where onnxruntime refuses the loan is it serialised, once. Extra outputs are always appended
  as a serialised fragment, so no caller's proto is ever modified. A ``ModelProto`` that still reads
  external data files is refused: onnxruntime finds those only beside a model file, so pass its path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from bnfold.errors import ModelLoadError, RuntimeUnavailableError, UsageError
from bnfold.io.atomic import scratch_folder
from bnfold.io.signals import deferred_signals
from bnfold.run.lending import EXTERNAL_FOLDER_KEY, DetachedModel, attach, detach, lend

try:
    # onnxruntime's import runs native initialisers that print a traceback when a Ctrl-C lands inside
    # them: the interrupt takes effect right after the import instead (still exit 130, one line)
    with deferred_signals():
        import onnxruntime as ort
except ImportError as _absent:  # neither `bnfold[cpu]` nor `bnfold[gpu]` installed: say so, exit 3
    raise RuntimeUnavailableError(
        "onnxruntime is not installed (verify and bench need it): install onnxruntime (CPU) or onnxruntime-gpu "
        "(CUDA), one of the two, never both; --no-verify, inspect and check work without it") from _absent

ModelSource = onnx.ModelProto | DetachedModel | bytes | str | os.PathLike

# bnfold's short names -> onnxruntime providers, most wanted first; accelerators fall back to CPU
# for the nodes they cannot run, as onnxruntime does by itself when given the list.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def available_providers() -> list[str]:
    """The bnfold provider names this onnxruntime build can use, e.g. ``["cpu"]``."""
    installed = set(ort.get_available_providers())
    return [short for short, names in PROVIDERS.items() if names[0] in installed]


def create_session(
    model: ModelSource,
    *,
    provider: str = "cpu",
    opt_level: str = "disable",
    threads: int | None = None,
    extra_outputs: Sequence[str] = (),
    graph: onnx.ModelProto | None = None,
    arena: bool = True,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for *model*, optionally exposing intermediate tensors as outputs.

    *arena*: keep onnxruntime's CPU memory arena (a session then holds its largest run's buffers until it is
    closed). ``verify --per-layer`` turns it off for its two models, whose runs return every compared tensor:
    on the 90 MB ResNet-50 that peaks 65 MiB lower (660 vs 725 MiB) and runs no slower; verified optimize keeps
    it (off saved 14-18 MiB there and cost ~7 %).

    *graph*: the model's structure when the caller has parsed it already (``load_graph``); with bytes or a
    path, extra outputs are then added without parsing or re-serialising the model (see ``_with_outputs``).

    Raises UsageError for unknown provider/level names or extra outputs the graph does not
    produce, RuntimeUnavailableError when the provider is not usable here, and ModelLoadError
    (onnxruntime's message on one line) when onnxruntime refuses the model.
    """
    providers = providers_for(provider)
    extra = tuple(dict.fromkeys(extra_outputs))
    if isinstance(model, onnx.ModelProto):
        model = detach(model) or model
    if isinstance(model, DetachedModel):
        session = _lent_session(model, extra, lambda: session_options(opt_level, threads, arena=arena), providers)
    else:
        options = session_options(opt_level, threads, arena=arena)
        session = _new_session(_payload(model, extra, options, graph), options, providers)
    if providers[0] not in session.get_providers():
        raise RuntimeUnavailableError(
            f"provider {provider!r} could not be initialised ({providers[0]} missing from the session); "
            f"available: {', '.join(available_providers())}"
        )
    return session


def _new_session(payload: str | bytes, options: ort.SessionOptions,
                 providers: tuple[str, ...]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(payload, options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own pybind11 exception types
        raise ModelLoadError(f"onnxruntime cannot load the model: {one_line(exc)}") from None


def _lent_session(model: DetachedModel, extra: tuple[str, ...], new_options: Callable[[], ort.SessionOptions],
                  providers: tuple[str, ...]) -> ort.InferenceSession:
    """A session that reads the model's large weights from its arrays (see :mod:`bnfold.run.lending`); where
    onnxruntime refuses that, one from the whole model serialised (its own error, if any, is raised)."""
    payload = _serialise_with_outputs(model.structure, extra)
    options = new_options()
    with scratch_folder("bnfold-lent-") as folder:  # a signal can't leave it behind, made or removed
        values = lend(model, folder, options)
        try:
            session = ort.InferenceSession(payload, options, providers=list(providers))
        except Exception:  # onnxruntime's pybind11 errors: retried below, where a real one is reported
            session = None
    if session is None:
        return _new_session(_serialise_with_outputs(attach(model), extra), new_options(), providers)
    session._bnfold_lent_values = values  # onnxruntime reads these buffers: keep them as long as the session
    return session


def one_line(exc: BaseException) -> str:
    """onnxruntime's message squeezed onto one line (its messages span several)."""
    return " ".join(str(exc).split())


def providers_for(provider: str) -> tuple[str, ...]:
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted[0] not in ort.get_available_providers():
        raise RuntimeUnavailableError(
            f"provider {provider!r} ({wanted[0]}) is not available in this onnxruntime build; "
            f"available: {', '.join(available_providers())}"
        )
    return wanted


def session_options(opt_level: str, threads: int | None, *, arena: bool = True) -> ort.SessionOptions:
    if opt_level not in OPT_LEVELS:
        raise UsageError(f"unknown optimisation level {opt_level!r}; choose one of: {', '.join(OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    # no busy-waiting between runs: verification interleaves numpy work with inference on few cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = arena
    if threads is not None:
        if threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    return options


def _payload(model: ModelSource, extra: tuple[str, ...], options: ort.SessionOptions,
             graph: onnx.ModelProto | None) -> str | bytes:
    """What to hand onnxruntime: the path itself when possible, else the serialised graph."""
    if isinstance(model, onnx.ModelProto):  # one that detach() refused: it reads external data files
        raise UsageError("this model reads tensors from external data files, which onnxruntime finds only "
                         "beside a model file: pass the model's path instead")
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
        return _with_outputs(data, graph if graph is not None else _parse(data), extra) if extra else data
    path = _model_path(model)
    if not extra:
        return str(path)
    structure = graph if graph is not None else _load_graph(path)
    options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(path.resolve().parent))  # data beside the .onnx
    return _with_outputs(path.read_bytes(), structure, extra)


def _model_path(model: ModelSource) -> Path:
    """*model* as the path of an existing file; UsageError for anything that is not a path."""
    if not isinstance(model, (str, os.PathLike)):
        raise UsageError(f"expected a ModelProto, bytes or a path, got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    return path


def _with_outputs(data: bytes, structure: onnx.ModelProto, extra: tuple[str, ...]) -> bytes:
    """*data* (a serialised model) with *extra* graph outputs, without parsing or re-serialising it.

    Protobuf merges a message with a second copy of a field on parsing: appending a serialised ModelProto
    whose graph holds only the new outputs yields the model with those outputs appended to graph.output.
    """
    added = _new_outputs(structure.graph, extra)
    if not added:
        return data
    fragment = onnx.ModelProto()
    fragment.graph.output.extend(onnx.ValueInfoProto(name=name) for name in added)  # types: ORT infers them
    return data + fragment.SerializeToString()


def load_graph(model: ModelSource) -> onnx.ModelProto:
    """The model's structure for reading names and shapes: a proto as is, bytes parsed, a path loaded
    without its external data (weights stay on disk; only the graph is needed)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, DetachedModel):
        return model.structure
    if isinstance(model, (bytes, bytearray)):
        return _parse(bytes(model))
    return _load_graph(_model_path(model))


def _parse(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ModelLoadError(f"not an ONNX model: {one_line(exc)}") from None
    if model.ir_version <= 0 or not model.HasField("graph"):  # protobuf parses b"" and much else
        raise ModelLoadError("not an ONNX model: the bytes hold no IR version or no graph")
    return model


def _load_graph(path: Path) -> onnx.ModelProto:
    """The graph without external data, through bnfold.io: the same refusals (empty, not ONNX, external
    data reaching outside the model's folder) as every other command."""
    from bnfold.io.model_file import load_model

    return load_model(path, load_external_data=False)


def _serialise_with_outputs(model: onnx.ModelProto, extra: tuple[str, ...]) -> bytes:
    """*model* serialised once, with *extra* as graph outputs; *model* itself is not touched."""
    try:
        data = model.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GiB limit
        raise ModelLoadError(f"model too large to serialise ({one_line(exc)}); save it with external data") from None
    return _with_outputs(data, model, extra)


def _new_outputs(graph: onnx.GraphProto, extra: tuple[str, ...]) -> list[str]:
    """The names of *extra* that are not graph outputs yet; UsageError for one no node produces."""
    present = {o.name for o in graph.output}
    names = [name for name in extra if name not in present]
    if not names:
        return names
    produced = {out for node in graph.node for out in node.output if out}
    produced.update(i.name for i in graph.input)
    missing = [n for n in names if n not in produced]
    if missing:
        raise UsageError(f"cannot expose {', '.join(map(repr, missing))}: no node of the main graph produces it")
    return names
