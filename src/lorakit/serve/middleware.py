"""Plain ASGI middleware (no BaseHTTPMiddleware: it would sit between a route and its
client's disconnect): the API key and request metrics, and the request-body limit."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from lorakit.serve.errors import ApiError, error_body
from lorakit.serve.metrics import Metrics
from lorakit.serve.security import check_key

# A body over the limit is still read (and dropped) up to this many bytes before the 413,
# so a client that is still sending gets the answer instead of a broken pipe.
DRAIN_BYTES = 16 * 1024 * 1024


async def send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Observe:
    """401 for /v1/ without the key (before any body is read); every request counted by
    route and status. Paths that are not routes share one label, so unknown paths cannot
    grow the metrics without bound."""

    def __init__(self, app, key: str | None, metrics: Metrics, routes: Callable[[], set[str]]):
        self.app, self.key, self.metrics, self.routes = app, key, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        label = path if path in self.routes() else "other"
        start, status = time.perf_counter(), 500
        if path.startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            try:
                check_key(self.key, headers.get(b"authorization", b"").decode("latin-1"))
            except ApiError as exc:
                self.metrics.requests.labels(label, str(exc.status)).inc()
                return await send_json(
                    send, exc.status, error_body(exc.status, exc.message, exc.code)
                )

        async def observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(label).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.requests.labels(label, str(status)).inc()


class BodyLimit:
    """413 for bodies over `limit` bytes. The body is read here, whole, before the app sees
    it, so neither a false Content-Length nor chunked transfer encoding gets around it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        over = declared.isdigit() and int(declared) > self.limit
        chunks, seen = [], 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived
            body = message.get("body", b"")
            seen += len(body)
            more = message.get("more_body", False)
            if seen > self.limit:
                over = True
            if over:
                if seen > DRAIN_BYTES:
                    break
                continue
            chunks.append(body)
        if over:
            message = f"request body over {self.limit} bytes"
            return await send_json(send, 413, error_body(413, message, "body_too_large"))
        whole = b"".join(chunks)
        given = False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # then only http.disconnect: routes watch for it

        await self.app(scope, replay, send)
