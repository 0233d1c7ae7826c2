"""The machine a benchmark ran on, to print beside every figure (the brief: name the CPU model with each one)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's name as lscpu prints it ("AMD EPYC", "Intel(R) Xeon(R) Processor"); the architecture elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
