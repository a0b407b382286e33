"""The admin page a dispatcher serves at ``/_admin/``: static files shipped in the package, no build step.

The page (``node/admin_page_files/``: ``index.html``, ``page.js``, ``page.css``)
holds no data: its script asks the person for a token (kept only in the tab's
``sessionStorage``), then reads ``GET /_admin/cluster`` and ``GET /_admin/alerts``
with it about once a second, as any client would, and draws the shards, the
replicas, the alerts and the throughput. So its three files are public routes.

Each file is answered with a strict Content-Security-Policy: scripts, styles
and requests from the page's own origin only (no inline script or style), no
framing, no form posting anywhere; so an injected string can neither run nor
carry the token away.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import ClassVar

from node.handlers import JSONHandler

FILES = "admin_page_files"  # the package directory under ``node`` that holds the page's files
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_MEDIA_TYPES = {
    ".html": "text/html; charset=UTF-8",
    ".js": "text/javascript; charset=UTF-8",
    ".css": "text/css; charset=UTF-8",
}


@cache
def page_file(name: str) -> bytes:
    """The bytes of the page's file ``name``, read from the package once. Raises ``FileNotFoundError``."""
    return (resources.files("node") / FILES / name).read_bytes()


class PageFileHandler(JSONHandler):
    """``GET`` one file of the admin page (``name``, set by each subclass), with the page's security headers.

    Errors (a ``Host`` the server does not answer to, say) keep the JSON error shape.
    """

    name: ClassVar[str]

    def get(self) -> None:
        self.set_header("Content-Type", _MEDIA_TYPES[self.name[self.name.rindex(".") :]])
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-cache")  # revalidated (ETag) so an upgrade shows at once
        self.finish(page_file(self.name))


class AdminPageHandler(PageFileHandler):
    """``GET /_admin/``: the page itself."""

    name = "index.html"


class AdminScriptHandler(PageFileHandler):
    """``GET /_admin/page.js``: the page's script."""

    name = "page.js"


class AdminStyleHandler(PageFileHandler):
    """``GET /_admin/page.css``: the page's style sheet."""

    name = "page.css"
