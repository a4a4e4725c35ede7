"""The JSON API under ``/api/v1``: the portal's flows for integrations and scripts.

The routes are declared as ``web.openapi.Operation`` specs in the modules named below;
``setup`` registers them and documents them in ``/api/v1/openapi.json`` in one step, so
the document lists exactly what is served, and ``web.api_input`` checks what callers
send against the same schemas. Authentication is the portal's (``web.auth``): an API
token (``Authorization: Bearer spt_...``) acting as its staff or vendor user, or a
signed-in browser sending its CSRF token on writes. Every decision is the policy
layer's; errors are ``{code, message}`` with the status of their kind.

* ``web.api_requests``: access requests (file, edit, cancel, approve, deny), shown as
  ``web.api_request_json`` has them;
* ``web.api_grants``: active grants, revocation;
* ``web.api_devices``: the inventory (search, read, add, change, CSV import);
* ``web.api_sessions``: gateway sessions and the kill switch;
* ``web.api_keys``: a vendor user's own SSH keys;
* ``web.api_admin``: segments, vendor organizations, invites, staff, API tokens.
"""

from __future__ import annotations

from aiohttp import web

from web import (
    api_admin,
    api_base,
    api_devices,
    api_grants,
    api_keys,
    api_request_json,
    api_requests,
    api_sessions,
)
from web.openapi import add_operations

OPERATIONS = (
    *api_requests.OPERATIONS,
    *api_grants.OPERATIONS,
    *api_devices.OPERATIONS,
    *api_sessions.OPERATIONS,
    *api_keys.OPERATIONS,
    *api_admin.OPERATIONS,
)
SCHEMAS = {
    **api_base.SCHEMAS,
    **api_request_json.SCHEMAS,
    **api_grants.SCHEMAS,
    **api_devices.SCHEMAS,
    **api_sessions.SCHEMAS,
    **api_keys.SCHEMAS,
    **api_admin.SCHEMAS,
}


def setup(app: web.Application) -> None:
    add_operations(app, OPERATIONS, SCHEMAS)
