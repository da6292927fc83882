"""Request bodies in OpenAI's schemas (the fields we honour; unknown fields are ignored,
as OpenAI-compatible servers do, but features we cannot honour are refused by name)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOPS, MAX_STOP_CHARS = 4, 256  # OpenAI's count; the length bounds the hold-back search


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    # torch's generators take a 64-bit seed (signed or unsigned)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int = Field(1, ge=1, le=1, description="Only n=1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    user: str | None = None
    tools: Any = None
    functions: Any = None
    response_format: Any = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value):
        if value:
            raise ValueError("tool / function calling is not supported by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value not in (None, {"type": "text"}):
            raise ValueError("only response_format {'type': 'text'} is supported by this server")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(
                f"stop takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters"
            )
        return stops

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        if value not in (None, False, 0):
            raise ValueError("logprobs is not supported by this server")
        return value

    def stops(self) -> list[str]:
        return list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise ValueError("prompt must be one string (batches: send one request each)")
            return prompt[0]
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo):
        if echo:
            raise ValueError("echo is not supported by this server")
        return echo


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class ClassifyRequest(_Body):
    model: str
    input: str | list[str]

    @field_validator("input")
    @classmethod
    def _texts(cls, value):
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input is empty")
        return texts


class LoadAdapterRequest(_Body):
    lora_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    lora_path: str = Field(max_length=4096)


class UnloadAdapterRequest(_Body):
    lora_name: str = Field(max_length=256)
