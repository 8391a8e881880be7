"""Errors of the HTTP servers as JSON, ``{"error": {"message", "type", "code"}}``, and the
request-body guard (neither FastAPI nor uvicorn caps a body's size)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the dynamicrag servers need `pip install dynamicrag[serve]`") from e

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(status_code=status, content=body, headers=headers)


_KIND_OF_STATUS = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
                   413: "request_too_large", 422: "invalid_request_error"}


def _field_message(errors: Sequence[dict[str, Any]]) -> str:
    """``body.passages.2.text: String should have at most 4000 characters; ...``"""
    parts = []
    for err in errors[:10]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _field_message(exc.errors()), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _KIND_OF_STATUS.get(exc.status_code, "invalid_request_error")
        return error_response(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error ({type(exc).__name__})", "server_error")


class BodyGuard:
    """ASGI middleware: cap the request body and log request metadata (never bodies).

    Neither FastAPI nor uvicorn caps body size, so an oversized body is refused here: at once
    from its Content-Length, or while it streams in (chunked uploads).
    """

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        sizes = {"in": 0, "out": 0, "status": 0}
        too_large = f"request body larger than {self.max_body_bytes} bytes"

        async def logged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                sizes["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        async def counted_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                sizes["in"] += len(message.get("body", b""))
                if sizes["in"] > self.max_body_bytes:
                    raise HTTPException(413, too_large)  # answered by the app's handler
            return message

        try:
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                await error_response(413, too_large, "request_too_large")(scope, receive, logged_send)
            else:
                await self.app(scope, counted_receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info(
                "%s %s %s -> %d in %.1f ms (request %s B, response %d B)", client[0], scope.get("method"),
                scope.get("path"), sizes["status"], 1000 * (time.perf_counter() - start),
                declared or sizes["in"], sizes["out"],
            )

