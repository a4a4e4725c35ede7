"""A separate OS process appending audit events (the concurrency test runs several).

python -m tests.support.audit_worker DATABASE_URL KEY_FILE WORKER COUNT GO_FILE
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from policy.db import create_engine, session_factory
from policy.keyfiles import load_signing_key
from recorder.audit import AuditLog, CheckpointPolicy


async def main(url: str, key_file: str, worker: str, count: int, go: Path) -> None:
    engine = create_engine(url)
    audit = AuditLog(
        session_factory(engine),
        signing_key=load_signing_key(Path(key_file)),
        checkpoints=CheckpointPolicy(every=7, seconds=3600),
    )
    deadline = time.monotonic() + 30
    while not go.exists():  # start together, so the appends really interleave
        if time.monotonic() > deadline:
            raise SystemExit("go file never appeared")
        await asyncio.sleep(0.01)
    try:
        for n in range(count):
            await audit.record("test:audit:append", actor=worker, worker=worker, n=n)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    url, key_file, worker, count, go = sys.argv[1:6]
    asyncio.run(main(url, key_file, worker, int(count), Path(go)))
