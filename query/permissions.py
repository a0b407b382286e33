"""What a caller may do: the permissions roles grant and routes and endpoints need.

A query endpoint needs ``read`` and a mutation ``write`` unless it declares
another (``@query(permission="status")``, ``@mutation(permission="admin")``);
which callers hold which permissions is the node's business (``node.auth``).
"""

from __future__ import annotations

import enum


class Permission(enum.StrEnum):
    """A named permission; ``read`` and ``write`` may be granted for listed endpoints only."""

    READ = "read"  # call query endpoints
    WRITE = "write"  # call mutation endpoints
    BULK = "bulk"  # POST /_bulk/{Model}
    STATUS = "status"  # cluster status and integrity alerts
    ADMIN = "admin"  # accept new code, migrate, repair, fault injection


class Access(enum.StrEnum):
    """What a route needs when it is not one fixed permission."""

    ENDPOINT = "endpoint"  # the permission the called endpoint declares
    MEMBERS = "cluster members"  # a request signed with the cluster's internal key, nothing else
    PUBLIC = "public"  # nothing: anyone may call it


def permission_named(name: str | Permission, what: str) -> Permission:
    """``name`` as a ``Permission``; raises ``TypeError`` naming ``what`` (the endpoint) if there is none."""
    try:
        return Permission(name)
    except ValueError:
        known = ", ".join(p.value for p in Permission)
        raise TypeError(f"{what}: no permission {name!r} (known: {known})") from None
