"""Run the benchmarks: ``python -m benchmarks [--only NAME ...] [--quick] [--write FILE]``.

Prints a table per measurement and, with ``--write``, rewrites the sections of
BENCHMARKS.md it measured (machine, versions, date, every figure and ratio), keeping the
other sections and the hand-written notes. ``--quick`` runs every measurement on small
sizes, to check that the rig works; its figures are not written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import decision, measure, render, report, sessions
from benchmarks.cluster import cluster_rig
from benchmarks.rig import Rig, extra_gateway, rig

NAMES = report.ORDER
RIG_NAMES = {"bulk", "setup", "revocation", "latency", "memory"}
CLUSTER = "revocation-cluster"


@dataclass(frozen=True)
class Sizes:
    nbytes: int = 1_000_000_000
    rounds: int = 3
    setup_runs: int = 20
    revocations: int = 20
    sessions: int = 1000
    probes: int = 1000
    idle_runs: int = 2
    rate: float = 5.0
    devices: int = 10_000
    grants: int = 50_000
    users: int = 5_000
    decisions: int = 2_000


QUICK = Sizes(20_000_000, 1, 3, 3, 20, 100, 1, 5.0, 1_000, 5_000, 500, 200)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "--only", action="append", choices=NAMES, help="run only this measurement (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes; refuses --write")
    full = Sizes()
    for name, help_text in (
        ("bytes", "bulk transfer size"),
        ("rounds", "bulk transfers per path"),
        ("setup-runs", "session setups per path"),
        ("revocations", "revocations to time"),
        ("sessions", "load sessions for latency under load and memory (the issue asks 1000)"),
        ("probes", "keystroke round trips per path per latency run"),
        ("idle-runs", "idle latency runs (the least disturbed one is judged)"),
        ("devices", "devices in the policy-decision database"),
        ("grants", "grants in the policy-decision database"),
        ("users", "vendor users in the policy-decision database"),
        ("decisions", "timed policy decisions per database"),
    ):
        default = getattr(full, "nbytes" if name == "bytes" else name.replace("-", "_"))
        parser.add_argument(f"--{name}", type=int, help=f"{help_text} (default {default})")
    parser.add_argument("--rate", type=float, help="keystrokes/s per load session (default 5)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="policy-decision databases")
    parser.add_argument("--pg-server", default=decision.PG_SERVER, help="user@host:port")
    parser.add_argument("--write", type=Path, help="merge the results into this markdown file")
    args = parser.parse_args(argv)
    if args.quick and args.write:
        parser.error("--quick figures are a smoke test, not benchmark results: drop --write")
    return args


def sizes(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else Sizes()
    given = {
        "nbytes" if k == "bytes" else k: v
        for k, v in vars(args).items()
        if v is not None and k in {*Sizes.__dataclass_fields__, "bytes"}
    }
    return Sizes(**{**vars(base), **given})


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    size = sizes(args)
    chosen = set(args.only or NAMES)
    tables: list[str] = []
    fresh: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sallyport-bench-") as tmp:
        # policy first: after the session load the load average still carries this
        # benchmark's own processes for a minute, and would read as other work
        if "policy" in chosen:
            config = decision.Config(
                devices=size.devices,
                grants=size.grants,
                users=size.users,
                decisions=size.decisions,
                warmup=min(200, size.decisions),
            )
            backends = tuple(b for b in args.backends.split(",") if b)
            result = decision.run(config, Path(tmp), backends, args.pg_server)
            tables.append(render.policy_table(result))
            fresh["policy"] = render.policy_markdown(result)
        if chosen & RIG_NAMES:
            _run_rig(Path(tmp) / "rig", size, chosen, tables, fresh)
        if CLUSTER in chosen:
            _run_cluster(Path(tmp) / "cluster", size, tables, fresh)
    print("\n".join(tables))
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(report.merge(old, fresh))
        print(f"wrote {', '.join(n for n in NAMES if n in fresh)} to {args.write}")
    return 0


def _run_rig(
    workdir: Path, size: Sizes, chosen: set[str], tables: list[str], fresh: dict[str, str]
) -> None:
    users = (
        size.rounds * ("bulk" in chosen)
        + 4 * size.setup_runs * ("setup" in chosen)  # two kex variants, two gateways
        + size.revocations * ("revocation" in chosen)
        + 1
    )
    with rig(workdir, users) as r:
        if "bulk" in chosen:
            cond = report.Conditions()
            bulk = report.Bulk(size.nbytes, size.rounds, measure.bulk(r, size.nbytes, size.rounds))
            bulk.conditions = cond.finish()
            tables.append(bulk.table())
            fresh["bulk"] = bulk.markdown()
        if "setup" in chosen:
            setup = _setup(r, size.setup_runs)
            tables.append(setup.table())
            fresh["setup"] = setup.markdown()
        if "revocation" in chosen:
            cond = report.Conditions()
            revocation = report.Revocation(measure.revocation(r, size.revocations))
            revocation.conditions = cond.finish()
            tables.append(revocation.table())
            fresh["revocation"] = revocation.markdown()
        if chosen & {"latency", "memory"}:
            latency = "latency" in chosen
            config = sessions.Config(
                sessions=size.sessions if "memory" in chosen or latency else 0,
                probes=size.probes if latency else min(size.probes, 100),
                idle_runs=size.idle_runs if latency else 1,
                rate=size.rate,
                typing=latency,
            )
            result = sessions.run(r, config)
            if latency:
                tables.append(render.latency_table(result))
                fresh["latency"] = render.latency_markdown(result)
            if result.opened is not None:
                tables.append(render.memory_table(result))
                fresh["memory"] = render.memory_markdown(result)


def _setup(r: Rig, runs: int) -> report.Setup:
    """Session setup with the device connection shared and not: two fresh gateway
    processes, one per ``upstream_reuse`` setting (none holds a device connection from an
    earlier measurement)."""
    with extra_gateway(r, reuse=False), extra_gateway(r, reuse=True):
        cond = report.Conditions()
        defaults = measure.setup(r, runs)
        r.kex = report.SAME_KEX
        try:
            same_kex = measure.setup(r, runs)
        finally:
            r.kex = None
        return report.Setup(runs, defaults, same_kex, cond.finish())


def _run_cluster(workdir: Path, size: Sizes, tables: list[str], fresh: dict[str, str]) -> None:
    """Revocation across two gateway processes on PostgreSQL (``benchmarks.cluster``)."""
    with cluster_rig(workdir, size.revocations) as r:
        cond = report.Conditions()
        revocation = report.Revocation(measure.revocation(r, size.revocations), cluster=True)
        revocation.conditions = cond.finish()
    tables.append(revocation.table())
    fresh[CLUSTER] = revocation.markdown()


if __name__ == "__main__":
    sys.exit(main())
