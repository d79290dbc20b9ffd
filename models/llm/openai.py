"""Stream chat completions from any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, ...).

Plain ``httpx`` with server-sent events, no vendor SDK. Leaving the ``async for`` (or cancelling
the consuming task) closes the HTTP response, which tells the server to stop generating.
Failures become :class:`~models.errors.BackendError`: retryable for 5xx, 408, 429, timeouts and
connection errors; not retryable for other 4xx answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from models.errors import BackendError, ConfigError, InputError
from models.llm.base import LLM, LLMRequest, grounded_prompt

if TYPE_CHECKING:
    from configs.schema import LLMConfig

DONE = "[DONE]"
"""The data of the event that ends an OpenAI stream."""

_NEWLINE = re.compile(r"\r\n|\r|\n")


def chat_messages(request: LLMRequest) -> list[dict[str, str]]:
    """The request as OpenAI chat messages.

    The first system message becomes :func:`grounded_prompt` of itself and the retrieved
    passages (a system message is added when there is none and passages exist); history and the
    user's turn follow in order. ``request.question`` is appended as the user's turn when the
    messages do not already end with one.
    """
    messages: list[dict[str, str]] = []
    grounded = False
    for message in request.messages:
        content = message.content
        if message.role == "system" and not grounded:
            content = grounded_prompt(content, request.passages)
            grounded = True
        messages.append({"role": message.role, "content": content})
    if not grounded and request.passages:
        system = grounded_prompt("", request.passages).strip()
        messages.insert(0, {"role": "system", "content": system})
    if request.question and (not messages or messages[-1]["role"] != "user"):
        messages.append({"role": "user", "content": request.question})
    if not any(m["role"] == "user" for m in messages):
        raise InputError("The request has no user turn: send the user's text as the question.")
    return messages


def request_body(
    request: LLMRequest, config: LLMConfig, *, stop: Sequence[str] = ()
) -> dict[str, Any]:
    """The JSON body of a streaming ``/chat/completions`` call."""
    body: dict[str, Any] = {
        "messages": chat_messages(request),
        "stream": True,
        "max_tokens": min(request.max_tokens, config.max_tokens),
        "temperature": config.temperature,
    }
    if config.model:
        body["model"] = config.model
    if stop:
        body["stop"] = list(stop)
    return body


class SSEDecoder:
    """Incremental decoder of a ``text/event-stream``: feed it text, get each event's data.

    Lines end at CR, LF or CRLF only (not at the other Unicode line breaks a model may emit
    inside JSON strings); comment lines (``:`` keep-alives) and fields other than ``data`` are
    skipped; the data lines of one event are joined with newlines.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[str]:
        """Add received text; return the data of every event it completes."""
        self._buffer += text
        events: list[str] = []
        start = 0
        for match in _NEWLINE.finditer(self._buffer):
            if match.group() == "\r" and match.end() == len(self._buffer):
                break  # a CR at the end may be the first half of a CRLF
            event = self._line(self._buffer[start:match.start()])
            if event is not None:
                events.append(event)
            start = match.end()
        self._buffer = self._buffer[start:]
        return events

    def close(self) -> list[str]:
        """End of stream: return the data of a last event that had no blank line after it."""
        events = self.feed("\n") if self._buffer else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            data = "\n".join(self._data)
            self._data = []
            return data
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


def delta_text(event: Mapping[str, Any]) -> str:
    """The text of one streamed chat-completion chunk ("" for role, usage or finish chunks).

    Raises :class:`BackendError` for an error event sent inside the stream.
    """
    error = event.get("error")
    if error is not None:
        detail = error.get("message", error) if isinstance(error, Mapping) else error
        code = error.get("code") if isinstance(error, Mapping) else None
        retryable = not isinstance(code, int) or code >= 500 or code in (408, 429)
        raise BackendError(f"The LLM endpoint reported an error mid-stream: {detail}",
                           retryable=retryable)
    choices = event.get("choices") or ()
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return delta.get("content") or ""


def _error_detail(body: str) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body.strip()[:300] or "(empty body)"
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


def http_error(status: int, body: str, url: str, model: str | None) -> BackendError:
    """Translate an HTTP error answer into a :class:`BackendError` that says what to check."""
    retryable = status >= 500 or status in (408, 429)
    if status in (401, 403):
        hint = "check the API key (the variable named by models.llm.api_key_env)"
    elif status == 404:
        hint = (f"check models.llm.base_url (it usually ends in /v1) and models.llm.model "
                f"({model!r})")
    elif status == 429:
        hint = "the endpoint is rate limiting; retry later or lower the load"
    elif status >= 500:
        hint = "the server failed; retry, and check the server's logs if it persists"
    else:
        hint = (f"check models.llm.model ({model!r}) and the request size against the model's "
                f"context (history length, max_tokens)")
    return BackendError(f"LLM endpoint {url} answered HTTP {status}: {_error_detail(body)}; "
                        f"{hint}.", retryable=retryable)


def transport_error(
    exc: httpx.HTTPError | httpx.InvalidURL, url: str, timeout_s: float
) -> BackendError:
    """Translate an ``httpx`` transport failure into a :class:`BackendError`."""
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return BackendError(f"models.llm.base_url gives an invalid URL {url!r}: {exc}; use "
                            f"http(s)://host:port/v1.", retryable=False)
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"LLM endpoint {url} did not answer within {timeout_s:g} s "
                            f"({type(exc).__name__}); check that the server is up and not "
                            f"overloaded, or raise models.llm.timeout_s.", retryable=True)
    if isinstance(exc, httpx.ConnectError):
        return BackendError(f"Cannot connect to the LLM endpoint {url}: {exc or 'refused'}; "
                            f"check that the server is running and models.llm.base_url.",
                            retryable=True)
    return BackendError(f"The connection to the LLM endpoint {url} failed: "
                        f"{type(exc).__name__}: {exc}.", retryable=True)


class OpenAICompatibleLLM(LLM):
    """Streams replies from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``config.base_url`` is the API root (``http://127.0.0.1:8080/v1``); ``config.model`` is sent
    when set; the API key is read from the environment variable ``config.api_key_env`` when
    that is set. ``transport`` replaces the network (tests use ``httpx.MockTransport``).
    """

    name = "openai"

    def __init__(
        self, config: LLMConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        base_url = (config.base_url or "").rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("models.llm.base_url must be an http(s) URL such as "
                              f"http://127.0.0.1:8080/v1 for the openai backend; got "
                              f"{config.base_url!r}")
        headers = {"Accept": "text/event-stream"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ConfigError(f"models.llm.api_key_env names {config.api_key_env!r}, but "
                                  "that environment variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._config = config
        self._url = f"{base_url}/chat/completions"
        self._headers = headers
        self._transport = transport
        self._timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0))
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """The chat-completions URL requests go to."""
        return self._url

    def _client_for_loop(self) -> httpx.AsyncClient:
        # A client's connection pool belongs to one event loop: make a new one per loop.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                headers=self._headers, timeout=self._timeout, transport=self._transport
            )
            self._client_loop = loop
        return self._client

    async def stream(
        self, request: LLMRequest, *, stop: Sequence[str] = ()
    ) -> AsyncIterator[str]:
        """Yield reply deltas; ``stop`` adds stop sequences for this call."""
        body = request_body(request, self._config, stop=stop)
        client = self._client_for_loop()
        try:
            async with client.stream("POST", self._url, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise http_error(response.status_code, response.text, self._url,
                                     self._config.model)
                decoder = SSEDecoder()
                async for text in response.aiter_text():
                    for data in decoder.feed(text):
                        if data == DONE:
                            return
                        delta = delta_text(_parse_event(data))
                        if delta:
                            yield delta
                for data in decoder.close():
                    if data != DONE and (delta := delta_text(_parse_event(data))):
                        yield delta
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(exc, self._url, self._config.timeout_s) from exc

    async def aclose(self) -> None:
        """Close the connection pool."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()


def _parse_event(data: str) -> Mapping[str, Any]:
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise BackendError(f"The LLM endpoint sent a malformed stream event: {data[:200]!r}",
                           retryable=True) from exc
    if not isinstance(event, dict):
        raise BackendError(f"The LLM endpoint sent an unexpected stream event: {data[:200]!r}",
                           retryable=True)
    return event
