"""Authorization decision latency with a hospital-sized inventory, SQLite and PostgreSQL.

A decision is what the gateway does per session before it connects to the device, through
the gateway's own policy cache (``policy.cache.PolicyCache``, same engine settings):
- at login (broker.auth.begin_auth): ``cache.vendor_login``, then ``decide_login``;
- when the channel starts (broker.relay._authorize): ``cache.device`` and
  ``cache.grants``, then ``decide_target``.

Each lookup reads the database's policy generation first (the cache's validity check), so
every decision pays that read. Two modes, same decisions, same cache object:
- ``cold``: the cache is emptied before every decision (a user's first session after any
  policy change): the generation read plus the queries;
- ``warm``: every decision was made once before (untimed), so the entries are there: the
  generation read plus memory.
After the warm decisions, ``changes`` times: a revocation of one of a user's live grants
written through another engine (as the web would), then that user's decision, which must
see it (and the cache must have been emptied). Those are timed apart (``after_change``):
any policy change empties the whole cache, so they are cold decisions.

The database is seeded with bulk inserts: ``devices`` devices (one ssh service each),
``users`` vendor users with one key each, ``grants`` grants spread over the users, each
naming one to three devices, with live, ended, future and revoked windows mixed. Every
decision is checked against the answer computed from the seeded rows in Python: a
decision that disagrees is a MeasurementError, so a wrong query cannot pass for a fast one.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, text, update
from sqlalchemy import create_engine as create_sync_engine

from benchmarks.stats import MeasurementError, load_average, now_text, percentile
from broker.cli import run_loop
from policy import migrate, store
from policy.cache import PolicyCache
from policy.db import create_engine, session_factory
from policy.decide import decide_login, decide_target
from policy.models import (
    CredentialKind,
    Device,
    DeviceService,
    Grant,
    Segment,
    Vendor,
    VendorKey,
    VendorUser,
    grant_device,
)

MODES = ("cold", "warm")
SERVICE = "ssh"
PG_SERVER = "postgres@127.0.0.1:5432"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkBenchmarkBenchmarkBenchmarkBen"
PARTS = ("login", "grants", "decide")


@dataclass
class Config:
    devices: int = 10_000
    grants: int = 50_000
    users: int = 5_000
    vendors: int = 50
    decisions: int = 2_000
    warmup: int = 200
    changes: int = 20  # warm mode, afterwards: revocations, each followed by a decision
    granted_share: float = 0.8  # decisions for a device the user has a grant naming
    seed: int = 11


@dataclass
class World:
    """What was seeded, kept in Python to know each decision's right answer."""

    now: datetime
    # per user: [grant id, devices, live]
    user_grants: list[list[tuple[int, frozenset[int], bool]]]

    def expected(self, user: int, device: int) -> bool:
        return any(live and device in devices for _g, devices, live in self.user_grants[user])

    def revoke_one(self, user: int, device: int) -> int | None:
        """Mark one of the user's live grants revoked, one naming ``device`` if any;
        returns its id (None: the user has no live grant)."""
        grants = self.user_grants[user]
        live = [i for i, (_g, _d, is_live) in enumerate(grants) if is_live]
        naming = [i for i in live if device in grants[i][1]]
        if not live:
            return None
        index = (naming or live)[0]
        grant_id, devices, _live = grants[index]
        grants[index] = (grant_id, devices, False)
        return grant_id


@dataclass
class Run:
    backend: str
    config: Config
    mode: str = "warm"
    seconds: list[float] = field(default_factory=list)
    after_change: list[float] = field(default_factory=list)  # warm: just after a revocation
    parts: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS})
    allowed: int = 0
    denied: int = 0
    seed_seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0

    def p(self, q: float, part: str | None = None) -> float:
        return percentile(self.parts[part] if part else self.seconds, q)


@dataclass
class Result:
    config: Config
    runs: list[Run]
    started: str = field(default_factory=now_text)


def _login(i: int) -> str:
    return f"user{i:05d}"


def _device(i: int) -> str:
    return f"dev{i:05d}"


def _windows(rng: random.Random, now: datetime) -> tuple[datetime, datetime, datetime | None]:
    """A grant's window and revocation: 70% live, 15% ended, 10% future, 5% revoked."""
    roll = rng.random()
    day = timedelta(days=1)
    if roll < 0.70:
        return now - day, now + day, None
    if roll < 0.85:
        return now - 10 * day, now - 9 * day, None
    if roll < 0.95:
        return now + 9 * day, now + 10 * day, None
    return now - day, now + day, now - timedelta(hours=1)


def seed(engine: Engine, config: Config) -> World:
    """Bulk-insert the inventory, the users and the grants (explicit ids, no round trips)."""
    rng = random.Random(config.seed)
    now = datetime.now(UTC)
    world = World(now, [[] for _ in range(config.users)])
    devices = [
        {"id": i + 1, "name": _device(i), "segment_id": 1, "address": f"10.{i >> 16}."
         f"{(i >> 8) & 255}.{i & 255}", "ssh_host_key": HOST_KEY, "credential_username": "svc",
         "credential_kind": CredentialKind.PASSWORD, "credential_secret": b"sealed"}
        for i in range(config.devices)
    ]  # fmt: skip
    services = [{"device_id": i + 1, "name": SERVICE, "port": 22} for i in range(config.devices)]
    vendors = [{"id": v + 1, "name": f"Vendor {v}"} for v in range(config.vendors)]
    users = [
        {"id": u + 1, "vendor_id": u % config.vendors + 1, "login": _login(u),
         "totp_secret": b"sealed"}
        for u in range(config.users)
    ]  # fmt: skip
    keys = [
        {"vendor_user_id": u + 1, "public_key": HOST_KEY, "fingerprint": f"SHA256:bench{u}"}
        for u in range(config.users)
    ]
    grants: list[dict[str, Any]] = []
    links: list[dict[str, int]] = []
    for g in range(config.grants):
        user = rng.randrange(config.users)
        start, end, revoked = _windows(rng, now)
        named = frozenset(rng.sample(range(config.devices), rng.randint(1, 3)))
        grants.append(
            {"id": g + 1, "vendor_user_id": user + 1, "ticket_ref": f"CHG{g:07d}",
             "services": [SERVICE], "window_start": start, "window_end": end,
             "revoked_at": revoked, "approved_by": "benchmark"}
        )  # fmt: skip
        links.extend({"grant_id": g + 1, "device_id": d + 1} for d in named)
        world.user_grants[user].append((g + 1, named, revoked is None and start <= now < end))
    with engine.begin() as conn:
        conn.execute(insert(Segment), [{"id": 1, "name": "bench"}])
        for model, rows in (
            (Device, devices),
            (DeviceService, services),
            (Vendor, vendors),
            (VendorUser, users),
            (VendorKey, keys),
            (Grant, grants),
        ):
            conn.execute(insert(model), rows)
        conn.execute(insert(grant_device), links)
    if engine.dialect.name == "postgresql":
        # what autovacuum would do after a bulk load, done now so that it does not run
        # in the middle of the measurement
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return world


def _workload(world: World, config: Config) -> Iterator[tuple[int, int]]:
    """(user, device) pairs: mostly a device one of the user's grants names (allowed or
    not, by its window), otherwise any device."""
    rng = random.Random(config.seed + 1)
    while True:
        user = rng.randrange(config.users)
        named = [d for _g, devices, _live in world.user_grants[user] for d in devices]
        if named and rng.random() < config.granted_share:
            yield user, rng.choice(named)
        else:
            yield user, rng.randrange(config.devices)


async def _decide(
    cache: PolicyCache, login: str, device: str, now: datetime
) -> tuple[bool, list[float]]:
    t0 = time.perf_counter()
    user = await cache.vendor_login(login)
    if user is None:
        raise MeasurementError(f"seeded user {login} was not found")
    login_ok = decide_login(store.user_view(user), now)
    t1 = time.perf_counter()
    found = await cache.device(device)
    grants = await cache.grants(user.id)
    t2 = time.perf_counter()
    decision = decide_target(device, found is not None, SERVICE, grants, now)
    t3 = time.perf_counter()
    if not login_ok.allow or found is None:
        raise MeasurementError(f"{login} on {device}: the seeded rows were not read back")
    return decision.allow, [t1 - t0, t2 - t1, t3 - t2]


async def _checked(cache: PolicyCache, world: World, user: int, device: int) -> Any:
    start = time.perf_counter()
    allow, parts = await _decide(cache, _login(user), _device(device), world.now)
    elapsed = time.perf_counter() - start
    if allow != world.expected(user, device):
        raise MeasurementError(
            f"{_login(user)} on {_device(device)}: decided allow={allow}, "
            f"the seeded grants say {world.expected(user, device)}"
        )
    return allow, elapsed, parts


async def measure(url: str, world: World, runs: dict[str, Run]) -> None:
    """Both modes, cold then warm, with one cache (``runs`` maps mode to its Run)."""
    config = next(iter(runs.values())).config
    engine, writer = create_engine(url), create_engine(url)
    cache = PolicyCache.for_url(session_factory(engine), url)
    if cache.reader is None:
        raise MeasurementError(f"{url}: the policy cache has no generation reader here")
    pairs = _workload(world, config)
    workload = [next(pairs) for _ in range(config.warmup + config.decisions)]
    try:
        for mode in MODES:
            run = runs.get(mode)
            if run is None:
                continue
            if mode == "warm":  # every decision once, untimed: the entries are there
                for user, device in workload:
                    await _checked(cache, world, user, device)
            run.load_before = load_average()
            for i, (user, device) in enumerate(workload):
                if mode == "cold":
                    cache.clear()
                allow, elapsed, parts = await _checked(cache, world, user, device)
                if i < config.warmup:
                    continue
                run.seconds.append(elapsed)
                for name, seconds in zip(PARTS, parts, strict=True):
                    run.parts[name].append(seconds)
                run.allowed += allow
                run.denied += not allow
            if mode == "warm":
                await _after_changes(cache, writer, world, workload, run)
            run.load_after = load_average()
    finally:
        await cache.close()
        await engine.dispose()
        await writer.dispose()
    for run in runs.values():
        if not run.allowed or not run.denied:
            raise MeasurementError(
                f"{run.backend} {run.mode}: {run.allowed} allowed, {run.denied} denied; the "
                "workload should produce both (the seeding is wrong)"
            )


async def _after_changes(
    cache: PolicyCache, writer: Any, world: World, workload: list[tuple[int, int]], run: Run
) -> None:
    """Revoke, then decide for that user: the decision must see the revocation."""
    for user, device in workload:
        if len(run.after_change) == run.config.changes:
            return
        grant_id = world.revoke_one(user, device)
        if grant_id is None:
            continue
        async with writer.begin() as conn:
            await conn.execute(
                update(Grant).where(Grant.id == grant_id).values(revoked_at=world.now)
            )
        resets = cache.resets
        _allow, elapsed, _parts = await _checked(cache, world, user, device)
        if cache.resets == resets:
            raise MeasurementError(f"revoking grant {grant_id} did not empty the policy cache")
        run.after_change.append(elapsed)
    if len(run.after_change) < run.config.changes:
        raise MeasurementError(
            f"only {len(run.after_change)} of {run.config.changes} revocations were possible"
        )


@contextmanager
def database(backend: str, workdir: Path, pg_server: str) -> Iterator[tuple[str, str]]:
    """(async URL, sync URL) of a fresh, migrated database; PostgreSQL's is dropped after."""
    if backend == "sqlite":
        path = workdir / "decisions.db"
        path.unlink(missing_ok=True)
        migrate.upgrade(f"sqlite+aiosqlite:///{path}")
        yield f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}"
        return
    name = f"sallyport_bench_{uuid.uuid4().hex[:10]}"
    admin = create_sync_engine(
        f"postgresql+psycopg://{pg_server}/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = f"postgresql+asyncpg://{pg_server}/{name}"
            migrate.upgrade(url)
            yield url, f"postgresql+psycopg://{pg_server}/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def run(
    config: Config,
    workdir: Path,
    backends: tuple[str, ...] = ("sqlite", "postgresql"),
    pg_server: str = PG_SERVER,
) -> Result:
    started = now_text()
    runs = []
    for backend in backends:
        modes = {mode: Run(backend, config, mode) for mode in MODES}
        with database(backend, workdir, pg_server) as (url, sync_url):
            engine = create_sync_engine(sync_url)
            try:
                start = time.perf_counter()
                world = seed(engine, config)
                seeded = time.perf_counter() - start
            finally:
                engine.dispose()
            for run_ in modes.values():
                run_.seed_seconds = seeded
            run_loop(measure(url, world, modes))
        runs.extend(modes.values())
    return Result(config, runs, started)
