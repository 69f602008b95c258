"""``/openapi.json`` and ``/docs``: the OpenAPI schema and a Swagger UI page, behind a token.

FastAPI's own (open) ``/docs``, ``/redoc`` and ``/openapi.json`` are disabled by the app; these
routes serve the same content to callers with a ``read`` token. The docs page embeds the schema
(a browser cannot add the bearer header to Swagger UI's own fetch of it); use its *Authorize*
button to try the routes.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from iotsentry.api.auth import require_read
from iotsentry.api.schemas import ErrorOut

__all__ = ["router"]

router = APIRouter(
    tags=["meta"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
)

_SWAGGER_JS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
_SWAGGER_CSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"


@router.get("/openapi.json", summary="The OpenAPI schema")
def openapi_schema(request: Request) -> JSONResponse:
    """The OpenAPI 3 schema of this API."""
    schema: dict[str, Any] = request.app.openapi()
    return JSONResponse(schema)


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI with the schema embedded."""
    spec = json.dumps(request.app.openapi()).replace("<", "\\u003c").replace(">", "\\u003e")
    title = json.dumps(request.app.title).replace("<", "\\u003c")
    html = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>iotsentry API</title>
<link rel="stylesheet" href="{_SWAGGER_CSS}"></head>
<body><div id="swagger-ui"></div>
<script src="{_SWAGGER_JS}"></script>
<script>
document.title = {title};
SwaggerUIBundle({{spec: {spec}, dom_id: "#swagger-ui", persistAuthorization: false}});
</script></body></html>"""
    return HTMLResponse(
        html,
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )
