"""The SSH username a vendor types: ``login`` or ``login:device``."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Target:
    login: str
    device: str | None


def parse_username(username: str) -> Target | None:
    """Split ``login[:device]``; None when either part is not a plain inventory name.

    Names are looked up in the inventory later; nothing here resolves an address.
    """
    login, sep, device = username.partition(":")
    if not _NAME.fullmatch(login):
        return None
    if not sep:
        return Target(login, None)
    if not is_inventory_name(device):
        return None
    return Target(login, device)


def is_inventory_name(name: str) -> bool:
    """A plain inventory name, and never an address (which would bypass the inventory)."""
    if not _NAME.fullmatch(name):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False
