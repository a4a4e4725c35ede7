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

from policy.models import Criticality


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
