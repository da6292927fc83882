"""The FastAPI app: OpenAI's routes over a Server (a LanguageModel + optional Classifier)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from lorakit.errors import ConfigError, LorakitError
from lorakit.infer.chat import render_chat
from lorakit.infer.load import adapter_task
from lorakit.serve import errors
from lorakit.serve.errors import ApiError
from lorakit.serve.feedback import FeedbackRequest, FeedbackUnavailable
from lorakit.serve.middleware import BodyLimit, Observe
from lorakit.serve.request import EngineBusy, Event
from lorakit.serve.request import Request as GenRequest
from lorakit.serve.schemas import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    LoadAdapterRequest,
    UnloadAdapterRequest,
)
from lorakit.serve.security import allowed_path, available_adapters, runtime_changes_allowed
from lorakit.serve.server import Server, check_unicode

SSE = "text/event-stream"


def _usage(event: Event) -> dict:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }


async def _events(
    server: Server, req: GenRequest, events: asyncio.Queue, http: Request | None = None
) -> AsyncIterator[Event]:
    """The request's events until it finishes. Ends it (its row is freed at the next step)
    when the client goes away (`http`: watched when not streaming; a stream's disconnect
    closes this generator) or when the engine has not finished it within its deadline."""
    deadline = time.monotonic() + server.config.request_timeout + 5.0  # the engine's own first
    try:
        while True:
            try:
                event: Event = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if http is not None and await http.is_disconnected():
                    return
                if time.monotonic() > deadline:
                    raise ApiError(
                        408,
                        f"the request took longer than the server's --request-timeout of "
                        f"{server.config.request_timeout:g} s",
                        "request_timeout",
                    ) from None
                continue
            if event.finish_reason == "error":
                server.finished(event)
                raise ApiError(event.status, event.error or "generation failed", event.code)
            yield event
            if event.finish_reason:
                server.finished(event)
                return
    finally:
        req.cancelled = True  # a client that went away frees its row at the next step


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="lorakit", docs_url=None, redoc_url=None)
    errors.install(app)
    metrics = server.metrics
    routes: set[str] = set()
    # the last added runs first: the key is checked before any body is read
    app.add_middleware(BodyLimit, limit=server.config.max_body_bytes)
    app.add_middleware(Observe, key=server.key, metrics=metrics, routes=lambda: routes)

    @app.get("/health")
    async def health():
        waiting, running = server.lm.engine.load()
        alive, why = server.lm.engine.health(server.config.stall_timeout)
        body = {"status": "ok" if alive else "unavailable", "waiting": waiting, "running": running}
        return JSONResponse(body if alive else {**body, "reason": why}, 200 if alive else 503)

    @app.get("/metrics")
    async def prometheus():
        server._update_load()
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page():
        if not server.config.page:
            return {"lorakit": "OpenAI-compatible API under /v1", "models": "/v1/models"}
        return FileResponse(server.config.page, media_type="text/html")

    @app.get("/v1/models")
    async def models(available: bool = False):
        """The models and adapters the server has registered (each adapter's `residency`:
        bank, memory or disk); with ?available=true also the adapter directories under
        --adapter-dir it would load on first use."""
        data = [
            {
                "id": e.id,
                "object": "model",
                "created": e.created,
                "owned_by": "lorakit",
                "root": e.id,  # never a server path
                "parent": e.parent,
                "task": "classification" if e.kind == "classifier" else "generation",
                **(
                    {"residency": server.lm.adapters.status(e.id)}
                    if e.kind == "lm" and e.parent
                    else {}
                ),
            }
            for e in list(server.catalog.entries.values())
        ]
        if available:
            known = {d["id"] for d in data}
            more = await run_in_threadpool(available_adapters, server.roots)
            data += [
                {
                    "id": n,
                    "object": "model",
                    "created": 0,
                    "owned_by": "lorakit",
                    "root": n,
                    "parent": server.lm.id,
                    "task": "generation",
                    "residency": "disk",
                    "loaded": False,
                }  # fmt: skip
                for n in more
                if n not in known
            ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        req = await run_in_threadpool(server.request, body, body.prompt)
        return await _respond(server, body, req, http, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request):
        messages = [{"role": _role(m.role), "content": _text(m)} for m in body.messages]
        try:
            prompt = render_chat(server.lm.tokenizer, messages)
        except ConfigError as exc:
            raise ApiError(400, str(exc), "no_chat_template") from None
        except Exception as exc:  # a template may reject a message order (jinja raise_exception)
            raise ApiError(
                400, f"the chat template rejected these messages: {exc}", "bad_messages"
            ) from None
        req = await run_in_threadpool(server.request, body, prompt)
        return await _respond(server, body, req, http, chat=True)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        if server.classifier is None:
            server.catalog.get(body.model, "classifier")  # 404 naming what there is
        if len(body.input) > server.config.max_classify_inputs:
            raise ApiError(
                400,
                f"{len(body.input)} inputs; at most {server.config.max_classify_inputs} per call",
                "too_many_inputs",
                "input",
            )
        for i, text in enumerate(body.input):
            check_unicode(text, f"input[{i}]")
        results = await run_in_threadpool(server.classifier.classify, body.model, body.input)
        return {
            "object": "list",
            "model": body.model,
            "data": [{"index": i, "object": "classification", **r} for i, r in enumerate(results)],
        }

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        entry = server.catalog.get(body.model, "lm")  # 404 naming the models there are
        try:  # off the event loop: the commit waits for the disk
            fid = await run_in_threadpool(server.feedback.add, body.row())
        except FeedbackUnavailable as exc:
            raise ApiError(503, str(exc), "feedback_unavailable") from None
        metrics.count_feedback(entry.id, body.rating)
        return {"status": "ok", "id": fid}

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadAdapterRequest):
        path = allowed_path(body.lora_path, server.roots)
        try:
            target = _target(server, path)
            await run_in_threadpool(target.add_adapter, body.lora_name, path, True)
        except EngineBusy as exc:
            raise ApiError(429, str(exc), "engine_busy") from None
        except LorakitError as exc:  # the client's path in the message, not the server's
            message = str(exc).replace(str(path), body.lora_path)
            raise ApiError(400, message, "invalid_adapter", "lora_path") from None
        server._count_adapters()
        return {"status": "ok", "message": f"adapter {body.lora_name!r} loaded"}

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadAdapterRequest):
        runtime_changes_allowed(server.roots)
        entry = server.catalog.get(body.lora_name)
        if entry.parent is None:
            raise ApiError(
                400, f"{body.lora_name!r} is a base model, not an adapter", "not_an_adapter"
            )
        target = server.lm if entry.kind == "lm" else server.classifier
        try:
            await run_in_threadpool(target.remove_adapter, body.lora_name)
        except EngineBusy as exc:
            raise ApiError(429, str(exc), "engine_busy") from None
        server._count_adapters()
        return {"status": "ok", "message": f"adapter {body.lora_name!r} unloaded"}

    routes.update(r.path for r in app.routes)  # metrics label unknown paths "other"
    return app


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def _text(message) -> str:
    try:
        text = message.text()
    except ValueError as exc:
        raise ApiError(400, str(exc), "unsupported_content", "messages") from None
    return check_unicode(text, "messages")


def _target(server: Server, path: Path):
    task, _ = adapter_task(path, confine=True)
    if task == "classification":
        if server.classifier is None:
            raise ApiError(
                400, "this is a classification adapter and the server has no --classifier"
            )
        return server.classifier
    return server.lm


async def _respond(server: Server, body, req: GenRequest, http: Request, chat: bool):
    events = server.submit(req)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(server, req, events, rid, created, body.model, chat, include_usage),
            media_type=SSE,
        )
    text, last = [], Event()
    async for event in _events(server, req, events, http):
        text.append(event.text)
        last = event
    finish = "stop" if last.finish_reason in ("stop", "cancelled") else last.finish_reason
    content = "".join(text)
    choice = (
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        if chat
        else {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
    )
    return JSONResponse(
        {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": body.model,
            "choices": [choice],
            "usage": _usage(last),
        }
    )


async def _stream(server, req, events, rid, created, model, chat, include_usage):
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str, finish: str | None, first: bool = False, usage=None) -> str:
        if chat:
            delta = (
                {"role": "assistant", "content": piece}
                if first
                else ({"content": piece} if piece else {})
            )
            choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
        else:
            choices = [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]
        data = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
        if usage is not None:
            data = {**data, "choices": [], "usage": usage}
        return f"data: {json.dumps(data)}\n\n"

    if chat:
        yield chunk("", None, first=True)
    try:
        async for event in _events(server, req, events):
            finish = event.finish_reason
            finish = "stop" if finish == "cancelled" else finish
            if event.text or finish:
                yield chunk(event.text, finish)
            if finish and include_usage:
                yield chunk("", None, usage=_usage(event))
    except ApiError as exc:
        yield f"data: {json.dumps(errors.error_body(exc.status, exc.message, exc.code))}\n\n"
    yield "data: [DONE]\n\n"
