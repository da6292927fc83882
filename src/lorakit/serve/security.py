"""API key check, request body limit, and the adapter-path allowlist."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from lorakit.serve.errors import ApiError, error_body


def check_key(expected: str | None, authorization: str | None) -> None:
    """401 unless `Authorization: Bearer <expected>` (compared in constant time)."""
    if expected is None:
        return
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not (authorization or "").startswith("Bearer ") or not hmac.compare_digest(
        given.encode(), expected.encode()
    ):
        raise ApiError(
            401, "missing or wrong API key — send 'Authorization: Bearer <key>'", "invalid_api_key"
        )


def allowed_path(path: str, roots: list[Path]) -> Path:
    """The adapter directory `path` resolved, if it lies inside one of `roots` (symlinks and
    '..' resolved first, so neither can leave them)."""
    if not roots:
        raise ApiError(
            403,
            "runtime adapter loading is off — start the server with --adapter-dir DIR",
            "adapter_loading_disabled",
        )
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved == root or root in resolved.parents:
            if not resolved.is_dir():
                raise ApiError(
                    400, f"{path} is not an adapter directory", "adapter_not_found", "lora_path"
                )
            return resolved
    raise ApiError(
        403,
        f"{path} is outside the allowed adapter directories",
        "adapter_path_not_allowed",
        "lora_path",
    )


class BodyLimit:
    """ASGI middleware: 413 for bodies over `limit` bytes, counted as they arrive (so a
    missing or false Content-Length does not help)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _reject(send, self.limit)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _reject(send, self.limit)


class _TooLarge(Exception):
    pass


async def _reject(send, limit: int) -> None:
    body = json.dumps(
        error_body(413, f"request body over {limit} bytes", "body_too_large")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
