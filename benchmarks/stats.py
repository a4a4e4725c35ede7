"""Percentiles and the machine's load, shared by every measurement.

One percentile definition for every figure in BENCHMARKS.md, so p99 means the same thing
in each table: the nearest-rank percentile (the smallest sample with at least p% of the
samples at or below it), never an interpolated value that no run produced.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class MeasurementError(RuntimeError):
    """A measurement that cannot be trusted: reported as an error, never as a number."""


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (``p`` in [0, 100]; 0 gives the minimum)."""
    if not values:
        raise MeasurementError("no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside [0, 100]")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot (``/proc/stat``); idle and iowait
    count as not busy."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(values)
    return (total - values[3] - values[4]) / CLK_TCK, total / CLK_TCK


def now_text() -> str:
    """The time a measurement started, as BENCHMARKS.md prints it."""
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def load_average() -> float:
    """The one-minute load average: other work on the machine shows up here."""
    return os.getloadavg()[0]
