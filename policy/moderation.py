"""Moderated sessions: when a vendor's input needs a staff observer present.

A device may require an observer (``Device.observer_required``: True or False, or None
to follow its criticality: life-sustaining devices are moderated while the setting
``observer_for_life_sustaining`` is on); a grant may add the requirement, never lift it.
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
    if grant_flag:
        return True
    if device_flag is not None:
        return device_flag
    return life_sustaining_default and str(criticality) == Criticality.LIFE_SUSTAINING.value


def input_allowed(required: bool, observers: int) -> bool:
    """Whether the vendor's input may reach the device now."""
    return not required or observers > 0


OBSERVER_ROLES = frozenset({"biomed", "security"})


def may_observe(roles: Iterable[str]) -> bool:
    """Staff who may watch live sessions and hold the door of moderated ones."""
    return bool(OBSERVER_ROLES.intersection(roles))
