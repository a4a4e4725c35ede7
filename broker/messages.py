"""What the vendor reads in the terminal when the gateway refuses something."""

from __future__ import annotations

from policy.decide import Decision, Reason

_TARGET = {
    Reason.DEVICE_UNKNOWN: "device '{device}' is not in the inventory",
    Reason.NO_GRANT: "you have no grant for device '{device}'",
    Reason.SERVICE_NOT_GRANTED: "your grant does not include {detail}",
    Reason.WINDOW_NOT_STARTED: "your access window for '{device}' has not started ({detail})",
    Reason.WINDOW_ENDED: "your access window for '{device}' has ended ({detail})",
    Reason.OUTSIDE_RECURRING_WINDOW: (
        "your recurring access window for '{device}' is not open now ({detail})"
    ),
    Reason.GRANT_REVOKED: "your grant for '{device}' was revoked",
}


def target_refusal(decision: Decision, device: str) -> str:
    text = _TARGET.get(decision.reason, "access refused ({reason})")
    return "sallyport: access denied: " + text.format(
        device=device, detail=decision.detail, reason=decision.reason
    )


def line(text: str, pty: bool) -> bytes:
    return (text + ("\r\n" if pty else "\n")).encode()


MFA_WRONG = "sallyport: verification code rejected"
MFA_REPLAYED = "sallyport: verification code already used; wait for the next one"
MFA_MALFORMED = "sallyport: a verification code is 6 digits"
LOCKED = (
    "sallyport: account locked after repeated failed verification codes; "
    "try again after {until:%H:%M} UTC"
)
DISABLED = "sallyport: account disabled"
BAD_USERNAME = "sallyport: log in as LOGIN or LOGIN:DEVICE (inventory names only)"
NO_DATABASE = "sallyport: the gateway cannot reach its database; no new sessions, try again later"
