"""The one percentile definition every figure uses, and the busy-machine note."""

from __future__ import annotations

import pytest

from benchmarks import report
from benchmarks.measure import Sample
from benchmarks.stats import MeasurementError, percentile


def test_nearest_rank_percentiles_of_one_to_a_hundred() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 99.5) == 100.0


def test_p99_of_few_samples_is_the_worst_not_an_interpolation() -> None:
    assert percentile([0.001, 0.002, 0.010], 99) == 0.010
    assert percentile([0.001, 0.002, 0.010], 50) == 0.002
    assert percentile([5.0], 1) == 5.0


def test_percentile_refuses_empty_samples_and_bad_ranks() -> None:
    with pytest.raises(MeasurementError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)
    with pytest.raises(MeasurementError, match="no samples"):
        _ = Sample().median


def test_the_section_line_says_when_other_work_was_running() -> None:
    quiet = report.Conditions("2026-01-01 00:00 UTC", 0.2, 0.3)
    busy = report.Conditions("2026-01-01 00:00 UTC", 0.2, 3.5)
    assert "Other processes were running" not in quiet.line()
    assert "Other processes were running" in busy.line()
    assert "3.50 after" in busy.line()
