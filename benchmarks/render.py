"""Console tables and BENCHMARKS.md sections for latency, memory and policy decisions."""

from __future__ import annotations

import os

from benchmarks import decision
from benchmarks.report import Conditions, verdict
from benchmarks.sessions import DIRECT, GATEWAY, LatencyRun, SessionsResult
from benchmarks.stats import percentile

MIB = 2**20
IDLE_TARGET_MS = 2.0
LOADED_TARGET_MS = 20.0
MEMORY_TARGET = 1 * MIB
DECISION_TARGET_MS = 1.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _conditions(result: SessionsResult) -> Conditions:
    """The machine's load around the idle runs: under load the benchmark's own pool,
    gateway and device processes raise it, so only the idle runs tell about other work."""
    return Conditions(result.started, result.idle[0].load_before, result.idle[-1].load_after)


def _latency_rows(runs: list[LatencyRun]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for run in runs:
        for path in (DIRECT, GATEWAY):
            added = path == GATEWAY
            rows.append(
                (
                    run.label,
                    path,
                    _ms(run.p(path, 50)),
                    _ms(run.p(path, 99)),
                    _ms(max(run.seconds[path])),
                    _ms(run.added(50)) if added else "",
                    _ms(run.added(99)) if added else "",
                    f"{run.load_before:.2f}",
                )
            )
    return rows


LATENCY_COLUMNS = ("run", "path", "p50 ms", "p99 ms", "max ms", "+p50 ms", "+p99 ms", "load")


def _reached(result: SessionsResult) -> str:
    """What part of the asked-for load was reached, and why not all of it."""
    opened, typed, target = result.opened, result.typed, result.config.sessions
    notes = []
    if opened is not None and opened.sessions < target:
        why = "; ".join(opened.errors) or "no error reported"
        notes.append(f"only {opened.sessions} of {target} sessions opened ({why})")
    if typed is not None and typed.rate < 0.9 * typed.offered_rate:
        notes.append(
            f"the typing reached {typed.rate:.0f} of the {typed.offered_rate:.0f} keystrokes/s "
            "asked for: each load session waits for its echo before the next key, and the "
            "machine (2 cores, shared by the load generator, the gateway, the device's "
            "sshd and cat processes and the measuring process) could not go faster"
        )
    return "; ".join(notes)


def _cpu(result: SessionsResult) -> str:
    cpu, typed = result.cpu, result.typed
    if cpu is None or typed is None or cpu.seconds <= 0:
        return ""
    gateway = cpu.cores(cpu.gateway)
    # the probe's own keystrokes went through the gateway in the same window
    probed = len(result.loaded.seconds[GATEWAY]) / cpu.seconds if result.loaded else 0.0
    keys = typed.rate + probed
    per_key = cpu.gateway / cpu.seconds / keys * 1e6 if keys else 0.0
    return (
        f"While the probes measured under load the gateway process used {gateway:.2f} CPU "
        f"seconds per second (its event loop runs on one core: 1.0 is all it can use), the "
        f"load generator {cpu.cores(cpu.loadgen):.2f}, the whole machine "
        f"{cpu.cores(cpu.machine):.2f} of {os.cpu_count()} cores; about {per_key:.0f} us of "
        "gateway CPU per echoed keystroke (the pool's and the probe's)."
    )


def _for_reached(reached: str) -> str:
    return f". Not all the load asked for was reached: {reached}" if reached else ""


def latency_table(result: SessionsResult) -> str:
    lines = [f"interactive latency: {result.config.probes} round trips per path per run"]
    lines.append("  " + "".join(f"{c:>10}" for c in LATENCY_COLUMNS))
    runs = [*result.idle, *([result.loaded] if result.loaded else [])]
    lines += ["  " + "".join(f"{c:>10}" for c in row) for row in _latency_rows(runs)]
    best = result.best_idle
    lines.append(
        f"  idle ({best.label}): sallyport adds {_ms(best.added(99))} ms at p99 "
        f"(target < {IDLE_TARGET_MS:g} ms)"
    )
    if result.loaded is not None and result.typed is not None:
        typed = result.typed
        lines.append(
            f"  loaded: {result.sessions_open} sessions typing {typed.rate:.0f} keys/s "
            f"(asked {typed.offered_rate:.0f}); sallyport adds {_ms(result.loaded.added(99))} ms "
            f"at p99 (target < {LOADED_TARGET_MS:g} ms)"
        )
        reached = _reached(result)
        if reached:
            lines.append(f"  not reached: {reached}")
        if result.cpu is not None:
            lines.append(f"  {_cpu(result)}")
    return "\n".join(lines)


def latency_markdown(result: SessionsResult) -> str:
    config = result.config
    runs = [*result.idle, *([result.loaded] if result.loaded else [])]
    head = "| " + " | ".join(LATENCY_COLUMNS) + " |\n|" + "---|" * len(LATENCY_COLUMNS)
    rows = "\n".join("| " + " | ".join(row) + " |" for row in _latency_rows(runs))
    best = result.best_idle
    idle_ok = best.added(99) * 1000 < IDLE_TARGET_MS
    text = f"""## Interactive latency

{_conditions(result).line()}

Keystroke to echo through a PTY: the measuring process (benchmark's own process, an
**asyncssh client with a PTY** on both paths, AES-128-GCM on both) runs
`stty raw -echo && exec cat` on the device and times one byte out until that same byte is
handed back by asyncssh (a missing, wrong or late echo stops the run with an error).
`direct` logs in to the device's `sshd` with a key; `sallyport` logs in to the gateway
(key + TOTP) and its session is recorded as asciicast. The probes alternate between the
two paths, {config.probes} round trips per path per run, 5-15 ms apart at random. `+p50`
and `+p99` are what the gateway adds: its percentile minus direct's in the same run.
`load` is the one-minute load average when the run started (under load it counts the
benchmark's own pool, gateway and device processes too).

{head}
{rows}

Idle: measured {len(result.idle)} times; the verdict uses the run the machine disturbed
least, judged by the direct path's p99 ({best.label}).
Target (under {IDLE_TARGET_MS:g} ms added at p99 when idle):
{verdict(idle_ok)} ({_ms(best.added(99))} ms).
"""
    if result.loaded is not None and result.typed is not None and result.opened is not None:
        typed, opened = result.typed, result.opened
        loaded_ok = result.loaded.added(99) * 1000 < LOADED_TARGET_MS
        reached = _reached(result)
        text += f"""
Under load (`loaded`), the probes ran while more recorded PTY sessions typed. They came
from a load generator in its own process: an asyncssh client pool, one vendor user, one
SSH connection and one PTY session running the same echo command per session; the
gateway opens one device connection per session. At most {config.open_concurrency} logins
were in flight, which keeps the device's `sshd` under its default `MaxStartups` of 10.
Each session typed a key every {1 / config.rate:.2f} s and waited for its echo before the
next.

- sessions: asked {config.sessions}, opened **{opened.sessions}** in {opened.seconds:.0f} s,
  {opened.failed} failed;
- typing: asked {typed.offered_rate:.0f} keystrokes/s in all, reached
  **{typed.rate:.0f} keystrokes/s** over {typed.seconds:.0f} s; {typed.missed} echoes
  missed, {typed.lost} sessions lost;
- the load sessions' own echo: p50 {_ms(typed.p50)} ms, p99 {_ms(typed.p99)} ms.

{_cpu(result)}

Target (under {LOADED_TARGET_MS:g} ms added at p99 under load):
{verdict(loaded_ok)} ({_ms(result.loaded.added(99))} ms){_for_reached(reached)}.
"""
    return text


def memory_table(result: SessionsResult) -> str:
    return (
        f"memory: {result.sessions_open} idle recorded sessions: gateway RSS "
        f"{result.rss_before / MIB:.1f} -> {result.rss_open / MIB:.1f} MiB, "
        f"{result.memory_per_session() / 1024:.0f} KiB per session (target <= 1024 KiB); "
        f"{result.fds_per_session():.2f} fds per session"
    )


def memory_markdown(result: SessionsResult) -> str:
    opened = result.opened
    assert opened is not None
    per = result.memory_per_session()
    short = (
        ""
        if opened.sessions >= result.config.sessions
        else f" Only {opened.sessions} of {result.config.sessions} sessions opened "
        f"({'; '.join(opened.errors) or 'no error reported'})."
    )
    typed = (
        f"\nAfter the typing phase the RSS was {result.rss_typed / MIB:.1f} MiB.\n"
        if result.rss_typed
        else ""
    )
    return f"""## Memory per session

{_conditions(result).line()}

The gateway process's `VmRSS` (`/proc/PID/status`) and open fds (`/proc/PID/fd`) with two
probe sessions open, then again {result.config.settle:g} s after the load generator (see
Interactive latency) had opened its recorded PTY sessions and left them idle; the
difference divided by the number of sessions.{short}

| sessions | RSS before | RSS with sessions | per session | fds before | fds with | fds per session |
|---|---|---|---|---|---|---|
| {opened.sessions} | {result.rss_before / MIB:.1f} MiB | {result.rss_open / MIB:.1f} MiB | **{per / 1024:.0f} KiB** | {result.fds_before} | {result.fds_open} | {result.fds_per_session():.2f} |
{typed}
Target (at most 1 MiB per session): {verdict(per <= MEMORY_TARGET)} ({per / MIB:.3f} MiB).
"""  # noqa: E501


def _policy_rows(result: decision.Result) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for run in result.runs:
        parts = " / ".join(f"{_ms(run.p(50, p))}, {_ms(run.p(99, p))}" for p in decision.PARTS)
        rows.append(
            (
                run.backend,
                run.mode,
                f"{run.seed_seconds:.1f}",
                _ms(run.p(50)),
                _ms(run.p(99)),
                _ms(max(run.seconds)),
                parts,
                f"{run.allowed} / {run.denied}",
                f"{run.load_before:.2f}",
            )
        )
    return rows


def _after_changes(result: decision.Result) -> str:
    return "; ".join(
        f"{run.backend}: {len(run.after_change)} revocations, each seen by the next decision "
        f"(p50 {_ms(percentile(run.after_change, 50))} ms, max {_ms(max(run.after_change))} ms)"
        for run in result.runs
        if run.after_change
    )


def policy_table(result: decision.Result) -> str:
    c = result.config
    lines = [
        f"policy decision: {c.devices} devices, {c.grants} grants, {c.users} users, "
        f"{c.decisions} decisions",
        f"  {'database':<12}{'cache':<8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}",
    ]
    for run in result.runs:
        lines.append(
            f"  {run.backend:<12}{run.mode:<8}{_ms(run.p(50)):>10}{_ms(run.p(99)):>10}"
            f"{_ms(max(run.seconds)):>10}   (target p99 < {DECISION_TARGET_MS:g} ms)"
        )
    lines.append(f"  after a change: {_after_changes(result)}")
    return "\n".join(lines)


def policy_markdown(result: decision.Result) -> str:
    c = result.config
    first, last = result.runs[0], result.runs[-1]
    conditions = Conditions(result.started, first.load_before, last.load_after)
    rows = "\n".join("| " + " | ".join(row) + " |" for row in _policy_rows(result))
    verdicts = "; ".join(
        f"{run.backend} {run.mode} {verdict(run.p(99) * 1000 < DECISION_TARGET_MS)} "
        f"({_ms(run.p(99))} ms)"
        for run in result.runs
    )
    return f"""## Policy decision

{conditions.line()}

The authorization decision the gateway makes per session, through the gateway's own code
(`policy.cache.PolicyCache`, engine settings of `policy.db.create_engine`): `login` =
`cache.vendor_login` plus `decide_login` (as `broker.auth.begin_auth`); `grants` =
`cache.device` and `cache.grants` (as `broker.relay._authorize`); `decide` =
`decide_target`. Every lookup first reads the database's policy generation, which triggers
advance with every policy write (migration 0006), and empties the cache if it moved: on
SQLite from the database file directly, on PostgreSQL over one dedicated connection.
`cold` empties the cache before every decision (a user's first session after any policy
change: the generation read plus one query each for the user with keys, the device with
services and segment, the user's grants with their device names); `warm` repeats decisions
already made once (the generation read plus memory). The database holds {c.devices:,}
devices (one ssh service each), {c.users:,} vendor users (one key each) and {c.grants:,}
grants spread at random over the users, each naming 1-3 devices (70% live, 15% ended, 10%
not started, 5% revoked), bulk-inserted into a freshly migrated database (PostgreSQL:
`VACUUM ANALYZE` after the load, as autovacuum would do, so that it does not run during the
measurement). {c.decisions:,} decisions per mode after
{c.warmup} untimed ones, for random users: {c.granted_share:.0%} for a device one of the
user's grants names, the rest for any device. Each decision is checked against the answer
computed from the seeded rows. One client, one decision at a time. After the warm
decisions, a grant is revoked through another database connection (as the web does) and
that user decides again, {c.changes} times: the decision must see the revocation and the
cache must have been emptied, or the run stops.

| database | cache | seed s | p50 ms | p99 ms | max ms | login / grants / decide (p50, p99 ms) | allowed / denied | load |
|---|---|---|---|---|---|---|---|---|
{rows}

After a change: {_after_changes(result)}.

Target (under {DECISION_TARGET_MS:g} ms at p99): {verdicts}.
"""  # noqa: E501
