"""TOTP second factor (policy/totp.py): drift window, replay guard, malformed codes, lockout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from policy import totp
from policy.totp import TotpOutcome, check_code, code_at, lock_until, step_at

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
# Mid-step, so ±1 step is well-defined and no boundary is near.
NOW = datetime(2025, 3, 14, 9, 30, 15, tzinfo=UTC)
STEP = timedelta(seconds=totp.STEP_SECONDS)


def at_steps(n: int) -> datetime:
    return NOW + n * STEP


def test_code_at_matches_pyotp() -> None:
    assert code_at(SECRET, NOW) == pyotp.TOTP(SECRET).at(NOW)
    assert len(code_at(SECRET, NOW)) == 6


def test_current_code_ok_and_returns_its_step() -> None:
    result = check_code(SECRET, code_at(SECRET, NOW), NOW, last_step=None)
    assert result.ok
    assert result.outcome is TotpOutcome.OK
    assert result.step == step_at(NOW)
    assert result.step == int(NOW.timestamp()) // 30


@pytest.mark.parametrize("drift", [-1, 1])
def test_adjacent_step_codes_accepted(drift: int) -> None:
    result = check_code(SECRET, code_at(SECRET, at_steps(drift)), NOW, last_step=None)
    assert result.ok
    assert result.step == step_at(NOW) + drift


@pytest.mark.parametrize("drift", [-2, 2, -10, 10])
def test_codes_two_or_more_steps_away_rejected(drift: int) -> None:
    code = code_at(SECRET, at_steps(drift))
    # A code for a far step must not also be valid near now (6-digit collisions).
    near = {code_at(SECRET, at_steps(d)) for d in (-1, 0, 1)}
    assert code not in near
    result = check_code(SECRET, code, NOW, last_step=None)
    assert not result.ok
    assert result.outcome is TotpOutcome.WRONG
    assert result.step is None


def test_code_from_another_secret_is_wrong() -> None:
    other = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # fixed, so the test is deterministic
    code = code_at(other, NOW)
    assert code not in {code_at(SECRET, at_steps(d)) for d in (-1, 0, 1)}
    assert check_code(SECRET, code, NOW, None).outcome is TotpOutcome.WRONG


def test_code_is_good_only_once() -> None:
    code = code_at(SECRET, NOW)
    first = check_code(SECRET, code, NOW, last_step=None)
    assert first.ok
    again = check_code(SECRET, code, NOW + timedelta(seconds=5), last_step=first.step)
    assert again.outcome is TotpOutcome.REPLAYED
    assert not again.ok
    assert again.step == first.step


def test_code_before_last_step_is_replayed() -> None:
    # The previous step's code is inside the drift window, but a later step was used.
    code = code_at(SECRET, at_steps(-1))
    result = check_code(SECRET, code, NOW, last_step=step_at(NOW))
    assert result.outcome is TotpOutcome.REPLAYED
    assert result.step == step_at(NOW) - 1


def test_next_step_code_after_last_step_is_ok() -> None:
    code = code_at(SECRET, at_steps(1))
    result = check_code(SECRET, code, NOW, last_step=step_at(NOW))
    assert result.ok
    assert result.step == step_at(NOW) + 1


def test_code_after_an_old_last_step_is_ok() -> None:
    result = check_code(SECRET, code_at(SECRET, NOW), NOW, last_step=step_at(NOW) - 5)
    assert result.ok


@pytest.mark.parametrize(
    "code",
    ["12345", "1234567", "", "      ", "abcdef", "12a456", "12345x", "-12345", "+12345", "1.2345"],
)
def test_malformed_codes(code: str) -> None:
    result = check_code(SECRET, code, NOW, last_step=None)
    assert result.outcome is TotpOutcome.MALFORMED
    assert result.step is None
    assert not result.ok


@pytest.mark.parametrize("fmt", ["{a} {b}", " {a}{b} ", "{a}  {b}", "{a}{b}\n", "\t{a}{b}"])
def test_spaces_tolerated(fmt: str) -> None:
    code = code_at(SECRET, NOW)
    typed = fmt.format(a=code[:3], b=code[3:])
    result = check_code(SECRET, typed, NOW, last_step=None)
    assert result.ok
    assert result.step == step_at(NOW)


@pytest.mark.parametrize(
    "code", ["\u0661\u0662\u0663\u0664\u0665\u0666", "\uff11\uff12\uff13\uff14\uff15\uff16"]
)
def test_non_ascii_digits_malformed(code: str) -> None:
    # Arabic-Indic and full-width digits pass str.isdigit() but are not a TOTP code.
    assert check_code(SECRET, code, NOW, last_step=None).outcome is TotpOutcome.MALFORMED


# --- lockout ----------------------------------------------------------------------------


def failures(*minutes_ago: float) -> list[datetime]:
    return [NOW - timedelta(minutes=m) for m in minutes_ago]


def test_four_failures_do_not_lock() -> None:
    assert lock_until(failures(0, 1, 2, 14), NOW) is None


def test_five_failures_in_window_lock_for_15_minutes() -> None:
    assert lock_until(failures(0, 1, 2, 3, 14), NOW) == NOW + timedelta(minutes=15)


def test_more_than_five_failures_lock() -> None:
    assert lock_until(failures(*range(10)), NOW) == NOW + timedelta(minutes=15)


def test_old_failures_outside_window_do_not_count() -> None:
    assert lock_until(failures(0, 1, 2, 3, 16, 30, 60 * 24), NOW) is None


def test_failure_exactly_15_minutes_ago_is_outside_window() -> None:
    assert lock_until(failures(0, 1, 2, 3, 15), NOW) is None


def test_no_failures() -> None:
    assert lock_until([], NOW) is None


def test_lock_until_accepts_a_generator() -> None:
    assert lock_until((t for t in failures(0, 1, 2, 3, 4)), NOW) == NOW + timedelta(minutes=15)


def test_provisioning_uri_round_trips_the_secret() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "vendor1")
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert parsed.generate_otp(step_at(NOW)) == code_at(secret, NOW)
    assert "sallyport" in uri
    assert "vendor1" in uri
