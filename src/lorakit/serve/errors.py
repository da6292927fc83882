"""Errors as OpenAI's JSON: {"error": {"message", "type", "param", "code"}}, always 4xx for
anything a client can send."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorakit.errors import AdapterNotFoundError, LorakitError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None):
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, code=None, param=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", "invalid_json")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return error_response(400, f"{where}: {message}" if where else message, None, where or None)

    @app.exception_handler(AdapterNotFoundError)
    async def _unknown(_: Request, exc: AdapterNotFoundError):
        return error_response(404, str(exc), "model_not_found", "model")

    @app.exception_handler(LorakitError)
    async def _lorakit(_: Request, exc: LorakitError):
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))
