"""Keeping web browsers from being used against a cluster: the cluster file's ``[http]``.

    [http]                          # optional
    hosts = ["db.example.com"]      # more names clients reach the servers by ("name" or "name:port")
    mutations_by_get = false        # true: a mutation that declares GET may be called by GET

A page in a browser can send requests to a server on the browser's own
network, and, by DNS rebinding (its name re-pointed at 127.0.0.1), read the
answers. Three checks stop it, none of which a client other than a browser
notices:

- ``HostCheck``: a server answers only requests whose ``Host`` is one of its
  configured addresses, ``localhost``, ``127.0.0.1`` or ``[::1]`` at one of
  its ports, or a name ``[http] hosts`` lists (421 ``host_not_allowed``);
- ``check_content_type``: a POST must say ``Content-Type: application/json``,
  which a page can send elsewhere only with the CORS preflight docraft never
  grants, so a form or a ``fetch`` without one cannot reach an endpoint
  (415 ``unsupported_media_type``);
- a mutation is not called by GET (an image tag, a link), even where it
  declares GET, unless ``mutations_by_get`` says so (405, by the router).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tornado.httputil import HTTPHeaders

from models.errors import HostNotAllowed, UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")  # a listen address for every interface names no host
_DEFAULT_PORTS = (80, 443)


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: the extra names servers answer to, and whether mutations may be called by GET."""

    hosts: tuple[str, ...] = ()
    mutations_by_get: bool = False


def parse_http(table: Any) -> HttpConfig:
    """The ``[http]`` table (``None`` if absent) as ``HttpConfig``; raises ``ValueError`` naming what is wrong."""
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise ValueError("[http] must be a table")
    unknown = sorted(set(table) - {"hosts", "mutations_by_get"})
    if unknown:
        raise ValueError(f"[http] has no setting {unknown[0]!r} (known: hosts, mutations_by_get)")
    hosts = table.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and _split(h)[0] for h in hosts):
        raise ValueError('[http] hosts must be a list of names such as "db.example.com" or "db.example.com:8000"')
    by_get = table.get("mutations_by_get", False)
    if not isinstance(by_get, bool):
        raise ValueError(f"[http] mutations_by_get must be true or false, got {by_get!r}")
    return HttpConfig(tuple(hosts), by_get)


class HostCheck:
    """Which ``Host`` headers a server answers; immutable.

    ``addresses`` are its own (``host:port``, as configured: the address
    others reach it at, and the one it listens on); ``hosts`` is ``[http] hosts``.
    """

    def __init__(self, addresses: Sequence[str], hosts: Sequence[str] = ()) -> None:
        own = [_split(address) for address in addresses]
        self.default_port = next((port for _, port in own if port in _DEFAULT_PORTS), None)
        self.exact = {(n, port) for name, port in own for n in (name, *_LOOPBACK) if n not in _WILDCARDS}
        self.exact |= {_split(h) for h in hosts if _split(h)[1] is not None}
        self.any_port = {_split(h)[0] for h in hosts if _split(h)[1] is None}

    def allows(self, host: str) -> bool:
        """Whether a request whose ``Host`` header is ``host`` is meant for this server."""
        name, port = _split(host)
        if name in self.any_port:
            return True
        if port is None:
            port = self.default_port
        return (name, port) in self.exact

    def check(self, headers: HTTPHeaders) -> None:
        """Raise ``HostNotAllowed`` unless the request's ``Host`` (when it has one) is allowed."""
        host = headers.get("Host")
        if host is not None and not self.allows(host):
            raise HostNotAllowed(
                f"this server does not answer to the name {host!r}: reach it by its configured address, or "
                "list the name in the cluster file's [http] hosts",
                host=host,
            )


def check_content_type(method: str, headers: HTTPHeaders) -> None:
    """Raise ``UnsupportedMediaType`` for a POST whose ``Content-Type`` is not ``application/json``."""
    if method != "POST":
        return
    given = headers.get("Content-Type", "")
    if given.split(";", 1)[0].strip().lower() != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"a POST must send JSON with Content-Type: {JSON_MEDIA_TYPE}, not {given or 'no Content-Type'}",
            content_type=given,
        )


def _split(host: str) -> tuple[str, int | None]:
    """``name:port`` (``[::1]:8000`` for IPv6) as a lowercase name and a port, ``None`` when absent or invalid."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, port = host.split(":")
    else:
        name, port = host, ""
    return name, int(port) if port.isdigit() and len(port) <= 5 else None
