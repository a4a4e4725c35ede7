"""TOTP second factor: RFC 6238 codes with a replay guard and a lockout rule.

Pure functions; the caller persists ``last_step`` and failure times and passes ``now``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import pyotp

STEP_SECONDS = 30
DRIFT_STEPS = 1
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=15)


class TotpOutcome(StrEnum):
    OK = "ok"
    MALFORMED = "malformed"
    WRONG = "wrong"
    REPLAYED = "replayed"


@dataclass(frozen=True)
class TotpCheck:
    outcome: TotpOutcome
    step: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is TotpOutcome.OK


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, login: str, issuer: str = "sallyport") -> str:
    return str(pyotp.TOTP(secret).provisioning_uri(name=login, issuer_name=issuer))


def step_at(now: datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def code_at(secret: str, now: datetime) -> str:
    return str(pyotp.TOTP(secret).at(now))


def check_code(secret: str, code: str, now: datetime, last_step: int | None) -> TotpCheck:
    """Check ``code`` against the steps around ``now`` (±DRIFT_STEPS).

    A code is good once: a match at or before ``last_step`` (the step of the last code
    accepted) is a replay.
    """
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not (code.isascii() and code.isdigit()):
        return TotpCheck(TotpOutcome.MALFORMED)
    totp = pyotp.TOTP(secret)
    current = step_at(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        expected = str(totp.generate_otp(step))
        if hmac.compare_digest(expected, code):
            if last_step is not None and step <= last_step:
                return TotpCheck(TotpOutcome.REPLAYED, step)
            return TotpCheck(TotpOutcome.OK, step)
    return TotpCheck(TotpOutcome.WRONG)


def lock_until(failures: Iterable[datetime], now: datetime) -> datetime | None:
    """The lockout end if the recent failures (including the latest) reach the limit."""
    recent = [t for t in failures if now - FAILURE_WINDOW < t <= now]
    if len(recent) >= MAX_FAILURES:
        return now + LOCKOUT
    return None
