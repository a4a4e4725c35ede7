"""The benchmark rig on small sizes: every path really measured, bad runs fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import __main__ as cli
from benchmarks import measure, report
from benchmarks.rig import rig

pytestmark = pytest.mark.integration


def test_every_path_is_measured_through_real_ssh(tmp_path: Path) -> None:
    nbytes = 3_000_000
    with rig(tmp_path, users=7) as r:
        bulk = report.Bulk(nbytes, 1, measure.bulk(r, nbytes, rounds=1))
        setup = cli._setup(r, runs=1)  # both key exchanges, reuse off and on
        assert r.extra == {}  # its two gateways are gone with the measurement
        revocation = report.Revocation(measure.revocation(r, runs=2))
        recordings = list((tmp_path / "gateway" / "recordings").rglob("*.sps"))
    assert set(bulk.samples) == {"direct", "openssh-jump", "sallyport"}
    assert set(setup.defaults) == set(setup.same_kex) == {*bulk.samples, "sallyport-reuse"}
    # seen from the device: one login per sallyport session, one for both reuse sessions
    assert setup.logins("sallyport") == 2 and setup.logins("sallyport-reuse") == 1
    seconds = revocation.sample.seconds
    assert len(seconds) == 2 and all(0 < t < 30 for t in seconds)
    assert all(s.median > 0 for s in bulk.samples.values())
    assert bulk.cpu_per_gb() > 0  # the gateway process did the relaying
    assert setup.cpu_ms_per_session("sallyport") > 0
    assert setup.cpu_ms_per_session("sallyport-reuse") > 0  # the second gateway's own CPU
    # every gateway session was recorded, on either gateway process
    assert len(recordings) == 7  # bulk, four setups, two revoked sessions
    assert max(p.stat().st_size for p in recordings) > nbytes
    text = report.merge("", {"bulk": bulk.markdown(), "setup": setup.markdown()})
    text = report.merge(text, {"revocation": revocation.markdown()})
    for name in ("direct", "openssh-jump", "sallyport", "sallyport-reuse"):
        assert f"| {name} |" in text
    assert "Machine:" in text and "met" in text
    assert "## Bulk transfer" in text and "## Revocation to disconnect" in text


def test_a_failed_transfer_is_an_error_not_a_number(tmp_path: Path) -> None:
    with rig(tmp_path, users=1) as r:
        argv, env = r.direct("head -c 1000 /dev/zero; exit 3")
        with pytest.raises(measure.MeasurementError, match="failed"):
            measure.run_timed(argv, env, pipe_count=True)
        argv, env = r.gateway("head -c 1000 /dev/zero")
        seconds, count = measure.run_timed(argv, env, pipe_count=True)
        assert count == 1000 and seconds > 0


def test_quick_sizes_and_flags() -> None:
    args = cli.parse(["--quick", "--only", "latency", "--sessions", "7"])
    size = cli.sizes(args)
    assert size.sessions == 7 and size.probes == cli.QUICK.probes
    assert cli.sizes(cli.parse([])).sessions == 1000  # the figure by default
    with pytest.raises(SystemExit):
        cli.parse(["--quick", "--write", "BENCHMARKS.md"])  # quick figures are never written
