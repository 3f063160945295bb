"""What the benchmarks record about the machine they ran on, and how they write their reports."""
from __future__ import annotations

import json
import platform
from pathlib import Path

__all__ = ["cpu_name", "write_report"]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(path: str | Path, report: dict, note: str = "") -> Path:
    """Write a benchmark's JSON report (creating its folder) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"saved {path}{note}")
    return path
