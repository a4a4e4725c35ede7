"""Run the benchmarks: ``python -m benchmarks [--bytes N] [--rounds N] [--setup-runs N]``.

Prints a table and, with ``--write``, rewrites BENCHMARKS.md with the machine, the
versions, the date, every figure and every ratio against the OpenSSH jump host.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks import measure, report
from benchmarks.rig import rig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--bytes", type=int, default=1_000_000_000, help="bulk transfer size")
    parser.add_argument("--rounds", type=int, default=3, help="bulk transfers per path")
    parser.add_argument("--setup-runs", type=int, default=20, help="session setups per path")
    parser.add_argument("--revocations", type=int, default=20, help="revocations to time")
    parser.add_argument("--write", type=Path, help="write the results as markdown here")
    args = parser.parse_args(argv)
    users = args.rounds + 2 * args.setup_runs + args.revocations + 1
    with tempfile.TemporaryDirectory(prefix="sallyport-bench-") as tmp, rig(Path(tmp), users) as r:
        bulk = measure.bulk(r, args.bytes, args.rounds)
        setup = measure.setup(r, args.setup_runs)
        r.kex = report.SAME_KEX
        setup_same_kex = measure.setup(r, args.setup_runs)
        revocation = measure.revocation(r, args.revocations)
    results = report.Results(
        args.bytes, args.rounds, args.setup_runs, bulk, setup, setup_same_kex, revocation
    )
    print(report.table(results))
    if args.write:
        notes = ""
        if args.write.exists():
            old = args.write.read_text()
            if report.NOTES_MARKER in old:
                notes = old[old.index(report.NOTES_MARKER) :]
        args.write.write_text(report.markdown(results) + ("\n" + notes if notes else ""))
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
