"""Facts about the machine a benchmark ran on, so that its numbers can be read (and doubted) later."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

from bnfold.report import ReportMixin


@dataclass(frozen=True)
class BenchEnvironment(ReportMixin):
    """Where the numbers come from: CPU, core counts, onnxruntime build, GPU when one was used."""

    cpu_model: str
    logical_cores: int | None
    physical_cores: int | None
    onnxruntime_version: str
    onnxruntime_providers: tuple[str, ...]
    gpu_name: str | None
    python_version: str
    platform: str


def collect_environment(*, gpu_used: bool) -> BenchEnvironment:
    """Gather environment facts; the GPU is queried only when a GPU provider actually ran."""
    import onnxruntime as ort

    return BenchEnvironment(
        cpu_model=cpu_model(),
        logical_cores=os.cpu_count(),
        physical_cores=_physical_cores(),
        onnxruntime_version=ort.__version__,
        onnxruntime_providers=tuple(ort.get_available_providers()),
        gpu_name=gpu_name() if gpu_used else None,
        python_version=platform.python_version(),
        platform=platform.platform(),
    )


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _physical_cores() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.cpu_count(logical=False)


def gpu_name() -> str | None:
    """First GPU's name from nvidia-smi, or None when there is no nvidia-smi or it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return names[0] if done.returncode == 0 and names else None
