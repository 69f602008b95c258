"""The web dashboard's static shell under ``/ui/``, and ``/whoami`` for the dashboard's login.

The dashboard (``iotsentry/ui/dashboard/``: ``index.html``, ``app.js``, ``style.css``) is a
single-page app with no build step and no third-party code: it draws its plots as SVG itself
and reads every piece of data from the JSON API with ``Authorization: Bearer <token>``.

**The one exception to "every route needs a token".** The shell holds no data, and a browser
cannot attach a bearer header to the navigation that loads a page, so exactly the paths in
:data:`SHELL_PATHS`, and only for ``GET``, are served without a token:
:class:`~iotsentry.api.auth.BearerAuthMiddleware` is given this allow-list by
:func:`~iotsentry.api.app.create_app` and compares the request path exactly (no prefixes, no
patterns). Every other path -- ``/whoami`` and all data routes included -- still needs a valid
token (``tests/api`` asserts both the allow-list and the 401s). The files are read from the
installed package, never from a path built from the request.

The shell is sent with a strict Content-Security-Policy (only same-origin scripts, styles and
``fetch``; no inline script, no ``eval``, no framing), ``nosniff`` and ``no-referrer``.

``GET /whoami`` (any valid token) returns the caller's token name and scope, so the dashboard can
check a pasted token at login and disable the acknowledge/assign buttons for ``read`` tokens.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from iotsentry.api.auth import require_read
from iotsentry.api.deps import Reader
from iotsentry.api.schemas import ErrorOut

__all__ = ["CSP", "SHELL_FILES", "SHELL_PATHS", "WhoAmIOut", "router", "shell_file", "whoami_router"]

SHELL_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The dashboard's files and their media types (the whole shell)."""

SHELL_PATHS: frozenset[str] = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in SHELL_FILES)})
"""The exact request paths served without a token (``GET`` only)."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def shell_file(name: str) -> bytes:
    """The content of one dashboard file (``name`` must be a key of :data:`SHELL_FILES`)."""
    if name not in SHELL_FILES:
        raise KeyError(name)
    return resources.files("iotsentry.ui").joinpath("dashboard", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(shell_file(name), media_type=SHELL_FILES[name], headers=_HEADERS)


router = APIRouter(tags=["dashboard"], include_in_schema=False)
"""The static shell: no token needed (see :data:`SHELL_PATHS`)."""


@router.get("/ui")
def ui_redirect() -> RedirectResponse:
    """``/ui`` -> ``/ui/`` (relative URLs in the page resolve under ``/ui/``)."""
    return RedirectResponse("/ui/", status_code=307, headers={"Cache-Control": "no-cache"})


@router.get("/ui/")
def ui_index() -> Response:
    """The dashboard page."""
    return _serve("index.html")


@router.get("/ui/index.html")
def ui_index_html() -> Response:
    """The dashboard page under its file name."""
    return _serve("index.html")


@router.get("/ui/app.js")
def ui_app_js() -> Response:
    """The dashboard's script."""
    return _serve("app.js")


@router.get("/ui/style.css")
def ui_style_css() -> Response:
    """The dashboard's style sheet."""
    return _serve("style.css")


class WhoAmIOut(BaseModel):
    """The caller's token."""

    name: str = Field(description="the token's name (recorded on acknowledgements and assignments)")
    scope: str = Field(description="read | admin")


whoami_router = APIRouter(
    tags=["meta"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
)
"""``/whoami``: needs a token like every data route."""


@whoami_router.get("/whoami", response_model=WhoAmIOut, summary="The caller's token name and scope")
def whoami(who: Reader) -> WhoAmIOut:
    """Name and scope of the token that made the request (the dashboard checks a token with it)."""
    return WhoAmIOut(name=who.name, scope=who.scope)
