"""JSON errors: `{"error": {"code": ..., "message": ..., "where": ...}}`, for every failure the API answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from depositwatch.config import redact_text
from depositwatch.jsonutil import dumps

log = structlog.get_logger("depositwatch.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An answer other than success: HTTP status, a stable code, a message, the field it is about."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        where: str | None = None,
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.where = where
        self.problems = list(problems)


def invalid(message: str, where: str | None = None) -> ApiError:
    """400 `invalid`, naming the field."""
    return ApiError(400, "invalid", message, where)


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON body of an error."""
    body: dict[str, Any] = {"code": error.code, "message": error.message, "where": error.where}
    if error.problems:
        body["problems"] = [{"where": where, "message": message} for where, message in error.problems]
    return web.Response(
        status=error.status, text=dumps({"error": body}), content_type="application/json", headers=headers
    )


def errors_middleware(max_body: int) -> Middleware:
    """Every failure as a JSON error; an unexpected one is logged (redacted) and answered 500."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _answer(request, handler, max_body)

    return middleware


async def _answer(request: web.Request, handler: Handler, max_body: int) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"WWW-Authenticate": 'Bearer realm="depositwatch"'} if exc.status == 401 else None
        return error_response(exc, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 413 else f"the request body is larger than {max_body} bytes"
        return error_response(ApiError(exc.status, code, message))
    except Exception as exc:
        log.error("api request failed", path=request.path, error=redact_text(f"{type(exc).__name__}: {exc}"))
        return error_response(ApiError(500, "internal", "the request failed; the daemon's log says why"))
