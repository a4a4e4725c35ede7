"""Moderated sessions: when a staff observer must watch before the vendor's input counts.

A device says it (``device.observer_required``: True always, False never, None by
criticality: life-sustaining devices are moderated while the setting
``observer_for_life_sustaining`` is on); a grant may add moderation
(``grant.observer_required``) but never remove a device's. In a moderated session the
vendor's input reaches the device only while at least one observer (security or biomed)
is watching; output flows and is recorded either way. Pure functions: the session core
asks, the front doors act.
"""

from __future__ import annotations

from collections.abc import Iterable

from policy.errors import InvalidInput
from policy.models import Criticality

# a device's rule as people and forms say it, and as the column stores it
OBSERVER_RULES: dict[str, bool | None] = {"criticality": None, "always": True, "never": False}


def observer_required(
    criticality: Criticality | str,
    device_flag: bool | None,
    grant_flag: bool,
    life_sustaining_default: bool,
) -> bool:
    """Does a session on this device under this grant need a staff observer?"""
    if device_flag is None:
        by_device = life_sustaining_default and Criticality(criticality) is (
            Criticality.LIFE_SUSTAINING
        )
    else:
        by_device = device_flag
    return by_device or grant_flag


def input_allowed(required: bool, observers: int) -> bool:
    """May the vendor's input reach the device now?"""
    return not required or observers > 0


OBSERVER_ROLES = frozenset({"biomed", "security"})


def may_observe(roles: Iterable[str]) -> bool:
    """Staff who may watch live sessions and hold the door of moderated ones."""
    return bool(OBSERVER_ROLES.intersection(roles))


def parse_observer_rule(text: str | bool | None) -> bool | None:
    """A device's rule from a form, CSV cell or API value: "criticality" (or "" / None),
    "always" (true) or "never" (false)."""
    if text is None or isinstance(text, bool):
        return text
    word = text.strip().lower()
    words = {"": None, "true": True, "false": False, **OBSERVER_RULES}
    if word not in words:
        allowed = ", ".join(OBSERVER_RULES)
        raise InvalidInput(
            "observer-invalid", f"observer rule {text!r} is not one of {allowed}, true, false"
        )
    return words[word]


def observer_rule(flag: bool | None) -> str:
    """The device's stored flag as its rule's name."""
    return next(word for word, value in OBSERVER_RULES.items() if value is flag)
