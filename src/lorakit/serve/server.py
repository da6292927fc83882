"""What is behind the routes: the models and catalog, built once at start, and the checks a
generation request passes before it is queued (prompt text, length, max_tokens)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lorakit.device import resolve_device
from lorakit.errors import AdapterNotFoundError, ConfigError, LorakitError
from lorakit.infer.generate import encode_prompt
from lorakit.precision import resolve_precision
from lorakit.serve.catalog import Catalog
from lorakit.serve.config import ServeConfig
from lorakit.serve.errors import ApiError
from lorakit.serve.feedback import FeedbackStore
from lorakit.serve.hosted import Classifier, LanguageModel
from lorakit.serve.metrics import Metrics
from lorakit.serve.request import AdapterGone, EngineBusy, Event, QueueFull
from lorakit.serve.request import Request as GenRequest
from lorakit.serve.schemas import ChatRequest
from lorakit.serve.security import adapter_in_dirs, api_key


class Server:
    """Everything behind the routes, built once at start (models loaded, adapters checked)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.catalog = Catalog()
        self.key = api_key(config.api_key_env)
        self.roots = [Path(d).expanduser().resolve() for d in config.adapter_dirs]
        for root in self.roots:
            if not root.is_dir():
                raise ConfigError(f"--adapter-dir {root} is not a directory")
        if config.page and not Path(config.page).is_file():
            raise ConfigError(f"--page {config.page} is not a file")
        if config.classifier_adapters and not config.classifier:
            raise ConfigError("--classifier-adapter needs --classifier MODEL")
        self.feedback = FeedbackStore(config.feedback_db)  # checked now, created on first use
        self.precision = resolve_precision(
            config.precision, resolve_device(config.device), serving=True
        )
        self.lm = LanguageModel(
            config.model,
            config.device,
            self.catalog,
            dtype=self.precision.dtype,
            quantize=config.quantize,
            served_name=config.served_model_name,
            max_batch_size=config.max_batch_size,
            max_queue=config.max_queue,
            on_step=self.metrics.on_step,
            max_loras=config.max_loras,
            max_cpu_loras=config.cpu_loras,
            prefix_cache_mb=config.prefix_cache_mb,
            metrics=self.metrics,
        )
        for name, path in config.adapters.items():
            self.lm.add_adapter(name, path)
        self.classifier = (
            Classifier(
                config.classifier,
                config.device,
                self.catalog,
                config.classifier_adapters,
                self.precision.dtype,
            )
            if config.classifier
            else None
        )
        self._count_adapters()

    def _count_adapters(self) -> None:
        self.metrics.adapters.set(sum(e.parent is not None for e in self.catalog.entries.values()))

    def close(self) -> None:
        self.lm.engine.close()
        self.feedback.close()

    # -- generation ----------------------------------------------------------------------------
    def resolve(self, model: str) -> str | None:
        """The adapter a request's `model` names: a served one, or with --adapter-dir one of
        its directories, registered on first use (a broken one: this request's 400)."""
        try:
            return self.lm.adapter_of(model)
        except AdapterNotFoundError:
            path = adapter_in_dirs(model, self.roots) if model not in self.catalog.entries else None
            if path is None:
                raise
        try:
            self.lm.add_on_demand(model, path)
        except EngineBusy as exc:
            raise ApiError(429, str(exc), "engine_busy") from None
        except LorakitError as exc:  # the client's name in the message, not the server's path
            raise ApiError(
                400, str(exc).replace(str(path), model), "invalid_adapter", "model"
            ) from None
        self._count_adapters()
        return model

    def request(self, body, prompt: str) -> GenRequest:
        """A checked generation request (runs in a worker thread: it may read adapter files)."""
        adapter = self.resolve(body.model)
        field = "messages" if isinstance(body, ChatRequest) else "prompt"
        ids = encode_checked(self.lm.tokenizer, prompt, field)
        cfg = self.config
        if len(ids) > cfg.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens; this server takes at most {cfg.max_prompt_tokens}",
                "context_length_exceeded",
                field,
            )
        room = self.lm.context - len(ids)
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > cfg.max_tokens_cap:
            raise ApiError(
                400,
                f"max_tokens is {asked}; this server allows at most {cfg.max_tokens_cap}",
                "max_tokens_too_large",
                "max_tokens",
            )
        if room < 1 or (asked is not None and asked > room):
            raise ApiError(
                400,
                f"prompt ({len(ids)} tokens) + max_tokens ({asked}) exceeds the model's context of "
                f"{self.lm.context} tokens",
                "context_length_exceeded",
                "max_tokens",
            )
        return GenRequest(
            prompt_ids=ids,
            adapter=adapter,
            max_tokens=asked or min(cfg.max_tokens_cap, room),
            emit=lambda event: None,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stops(),
            timeout=cfg.request_timeout,
        )

    def submit(self, req: GenRequest) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: Event) -> None:  # runs on the engine thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown): stop generating
                req.cancelled = True

        req.emit = emit
        try:
            self.lm.engine.submit(req)
        except QueueFull as exc:
            raise ApiError(429, str(exc), "queue_full") from None
        except AdapterGone as exc:
            raise ApiError(404, str(exc), "model_not_found") from None
        self._update_load()
        return events

    def _update_load(self) -> None:
        waiting, running = self.lm.engine.load()
        self.metrics.queue_depth.set(waiting)
        self.metrics.running.set(running)

    def finished(self, event: Event) -> None:
        self.metrics.prompt_tokens.inc(event.prompt_tokens)
        self.metrics.generated_tokens.inc(event.completion_tokens)
        self._update_load()


def check_unicode(text: str, field: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in JSON): no tokenizer takes it
        raise ApiError(400, f"{field} is not valid Unicode text", "invalid_text", field) from None
    return text


def encode_checked(tokenizer, prompt: str, field: str) -> list[int]:
    """The prompt's ids, checked: text every tokenizer takes, and at least one token."""
    check_unicode(prompt, field)
    try:
        ids = encode_prompt(tokenizer, prompt)
    except Exception as exc:  # tokenizers raise their own types on input they refuse
        raise ApiError(400, f"{field} cannot be tokenized ({exc})", "invalid_text", field) from None
    if not ids and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id]  # an empty prompt means "start of text"
    if not ids:
        raise ApiError(400, f"{field} is empty", "empty_prompt", field)
    return ids
