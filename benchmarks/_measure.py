"""Shared helpers for the measurement scripts: interleaved timing, peak memory in fresh processes, tables.

Why peak memory is read from ``/proc/self/status`` (VmHWM) inside the child and not from
``getrusage``: on Linux a process's ``ru_maxrss`` inherits the high-water mark of the memory map it
replaced at ``exec``, i.e. the *parent's* peak, and ``RUSAGE_CHILDREN`` is the largest child so far.
Either would let one measurement's peak leak into the next; VmHWM starts afresh with every exec.
"""

from __future__ import annotations

import cProfile
import gc
import importlib.util
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the `models` package and an uninstalled bnfold
RESULTS = ROOT / "benchmarks" / "results"
MIB = 1024 * 1024
RESULT_MARK = "@@measure "  # peers print to stdout; the child's figures are on the line after this mark

Runner = Callable[[Path, Path], object]  # may return a dict of facts for the report


@dataclass(frozen=True)
class Variant:
    """One way of turning the source model into an output file; ``setup`` imports and returns the runner."""

    key: str
    label: str
    setup: Callable[[], Runner]
    requires: tuple[str, ...] = ()  # optional modules; the variant is skipped when one is missing

    def missing(self) -> str | None:
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return module
        return None


@dataclass(frozen=True)
class Memory:
    peak: int  # bytes: VmHWM of the child, interpreter and imports included
    imports: int  # bytes: VmRSS after the imports, before the work
    seconds: float  # the one run's wall time (cold caches of a fresh process)
    info: dict | None = None  # what the runner returned, when it returned a dict


# ---------------------------------------------------------------- files and processes

def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` figure (VmRSS, VmHWM) in bytes; 0 where /proc is unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def remove_outputs(path: Path) -> None:
    """Delete a model and its ``.data`` companion so every timed write creates fresh files."""
    for candidate in (path, path.with_name(path.name + ".data")):
        candidate.unlink(missing_ok=True)


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def child_main(variants: Sequence[Variant], arguments: Sequence[str]) -> None:
    """Entry point of a measuring child (``KEY SOURCE OUTPUT [WARMUP]``): import, run once, print figures.

    A WARMUP model (small) is run first so that imports done lazily inside the tools are not timed; it is
    small enough not to move the peak.
    """
    key, source, output, *warmup = arguments
    runner = next(v for v in variants if v.key == key).setup()
    if warmup:
        runner(Path(warmup[0]), Path(output))
        remove_outputs(Path(output))
    gc.collect()
    imports = status_bytes("VmRSS")
    started = time.perf_counter()
    info = runner(Path(source), Path(output))
    seconds = time.perf_counter() - started
    figures = {"peak": status_bytes("VmHWM"), "imports": imports, "seconds": seconds,
               "info": info if isinstance(info, dict) else None}
    print(RESULT_MARK + json.dumps(figures), flush=True)


def measure_in_child(script: Path, key: str, source: Path, output: Path, *, timeout: float = 1800,
                     fresh_output: bool = True, warmup: Path | None = None) -> Memory:
    """Run ``script --child key source output [warmup]`` in a fresh interpreter and read back its figures."""
    if fresh_output:
        remove_outputs(output)
    command = [sys.executable, str(script), "--child", key, str(source), str(output)]
    command += [str(warmup)] if warmup else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    marked = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not marked:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"child {key!r} failed (exit {done.returncode}): " + " | ".join(tail))
    return Memory(**json.loads(marked[-1][len(RESULT_MARK):]))


# ---------------------------------------------------------------- timing

def time_interleaved(runners: dict[str, Runner], source: Path, folder: Path, rounds: int,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, list[float]]:
    """Run every runner once per round, alternating forward and reversed order, so drift hits all alike."""
    keys = list(runners)
    times: dict[str, list[float]] = {key: [] for key in keys}
    for round_no in range(rounds):
        for key in keys if round_no % 2 == 0 else keys[::-1]:
            output = folder / f"{key}.onnx"
            remove_outputs(output)
            gc.collect()
            started = time.perf_counter()
            runners[key](source, output)
            times[key].append(time.perf_counter() - started)
        progress(f"round {round_no + 1}/{rounds}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in keys))
    return times


def in_fresh_processes(script: Path, keys: Sequence[str], source: Path, output: Path, rounds: int, *,
                       warmup: Path | None = None, progress: Callable[[str], None] = lambda _: None,
                       ) -> dict[str, list[Memory]]:
    """Each key once per round in its own interpreter, alternating order: times and peaks untouched by the
    allocator state or caches that earlier runs left in a shared process."""
    runs: dict[str, list[Memory]] = {key: [] for key in keys}
    for round_no in range(rounds):
        for key in keys if round_no % 2 == 0 else keys[::-1]:
            runs[key].append(measure_in_child(script, key, source, output, warmup=warmup))
        progress(f"fresh-process round {round_no + 1}/{rounds}: "
                 + ", ".join(f"{k} {runs[k][-1].seconds:.2f}s" for k in keys))
    remove_outputs(output)
    return runs


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------- profiling

@dataclass(frozen=True)
class Part:
    """A function whose cumulative time is one line of a profile breakdown."""

    label: str
    file_suffix: str  # "~" for built-in methods
    name: str  # function name; for built-ins, a substring of cProfile's description


# Stages of `bnfold optimize` worth a line in a profile breakdown (nested lines are inside the line above).
BNFOLD_STAGES = (
    Part("total (optimize_file)", "bnfold/cli/optimize_file.py", "optimize_file"),
    Part("load: bnfold.io.load_model_and_layout", "bnfold/io/model_file.py", "load_model_and_layout"),
    Part("fold + cleanup (optimizer._fold)", "bnfold/optimizer.py", "_fold"),
    Part("  rule matching + fold arithmetic (_first_plan)", "bnfold/fold/driver.py", "_first_plan"),
    Part("    rounding checks (fold_math.cast_checked)", "bnfold/fold/fold_math.py", "cast_checked"),
    Part("  writing folded constants (set_constant_input)", "bnfold/fold/graph.py", "set_constant_input"),
    Part("  index rebuilds (GraphIndex.refresh)", "bnfold/fold/graph.py", "refresh"),
    Part("  cleanup (clean_graph)", "bnfold/fold/cleanup.py", "clean_graph"),
    Part("stats before/after (model_stats)", "bnfold/fold/sizes.py", "model_stats"),
    Part("verification (verification.verify)", "bnfold/verification/verifier.py", "verify"),
    Part("  graph parses (runtime.load_graph)", "bnfold/run/sessions.py", "load_graph"),
    Part("  ORT session creation (runtime.create_session)", "bnfold/run/sessions.py", "create_session"),
    Part("    payload for ORT (parse/serialise with extra outputs)", "bnfold/run/sessions.py", "_payload"),
    Part("  ORT inference (InferenceSession.run)", "onnxruntime_inference_collection.py", "run"),
    Part("  comparing tensors (compare.compare_arrays)", "bnfold/verification/compare.py", "compare_arrays"),
    Part("    of which cosine (cosine.cosine_from_difference)", "bnfold/verification/cosine.py",
         "cosine_from_difference"),
    Part("weights copied out for onnxruntime, both models (detached.detach)", "bnfold/run/lending.py", "detach"),
    Part("source external-data check (io.uses_external_data)", "bnfold/io/model_file.py", "uses_external_data"),
    Part("save: bnfold.io.save_model", "bnfold/io/model_file.py", "save_model"),
    Part("all SerializeToString calls", "~", "SerializeToString"),
    Part("all ParseFromString calls", "~", "ParseFromString"),
    Part("all fsync calls", "~", "fsync"),
)


def profile_call(call: Callable[[], object]) -> pstats.Stats:
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        call()
    finally:
        profiler.disable()
    return pstats.Stats(profiler)


def cumulative(stats: pstats.Stats, part: Part) -> float:
    """Seconds spent in (and below) every function matching *part*."""
    total = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if part.file_suffix == "~":
            if filename == "~" and part.name in name:
                total += ct
        elif filename.replace(os.sep, "/").endswith(part.file_suffix) and name == part.name:
            total += ct
    return total


# ---------------------------------------------------------------- reporting

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float | None, limit: float) -> str:
    """'met' or 'MISSED by N%' for a ratio that must stay at or below *limit*."""
    if value is None:
        return "n/a"
    if value <= limit:
        return "met"
    return f"MISSED by {100 * (value / limit - 1):.0f}%"


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.0f}"


def versions_line(packages: Sequence[str]) -> str:
    """Interpreter, machine and package versions: figures mean little without them."""
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    cpu = platform.processor() or platform.machine()
    return (f"Python {platform.python_version()}, {platform.system()} {cpu}, {os.cpu_count()} CPUs; "
            + ", ".join(found))


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text, encoding="utf-8")
    return path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
