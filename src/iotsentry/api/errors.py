"""JSON errors of the REST API: every error body is ``{"error": CODE, "detail": ...}``.

``CODE`` is a short machine-readable word (``unauthorized``, ``forbidden``, ``not_found``,
``validation_error``, ``method_not_allowed``, ``conflict``, ``internal_error``, ...);
``detail`` is a human-readable message, or for ``validation_error`` the list of problems as
pydantic reports them (``loc``, ``msg``, ``type``).
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "install_error_handlers"]

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(StarletteHTTPException):
    """An HTTP error with a machine-readable ``error`` code and a human ``detail``."""

    def __init__(
        self, status_code: int, error: str, detail: object = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail=None, headers=headers)
        self.error = error
        self.detail_value = detail if detail is not None else HTTPStatus(status_code).phrase


def not_found(what: str) -> ApiError:
    """A 404 naming what was not found."""
    return ApiError(404, "not_found", f"{what} not found")


def _code(status: int) -> str:
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:
        return "error"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        error, detail = exc.error, exc.detail_value
    else:
        error, detail = _code(exc.status_code), exc.detail
    return JSONResponse(
        {"error": error, "detail": jsonable_encoder(detail)}, status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return JSONResponse({"error": "validation_error", "detail": problems}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal_error", "detail": "internal server error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a ``{"error", "detail"}`` JSON body."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
