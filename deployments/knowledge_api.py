"""The knowledge API of the Gateway: a tenant's knowledge bases over HTTP, by API key.

Every route needs an API key with the ``ingest`` role, sent as ``Authorization: Bearer <key>``
or ``X-API-Key: <key>``. The tenant is always the key's own: no route takes a tenant from its
path, query or body (a body that names one is refused), so a key reaches its own tenant's
knowledge bases and nothing else.

* ``POST /v1/knowledge/{kb}/documents``: the body is a JSON list of
  ``{"text": ..., "source": ..., "answer": ...}`` (``answer`` optional: a Q&A pair whose
  ``text`` is the question), at most :data:`MAX_DOCUMENTS` of them and
  :data:`~deployments.limits.INGEST_LIMIT_BYTES` in all. It replaces the tenant's knowledge
  base ``kb`` with these documents (creating it) and returns ``{"tenant", "kb", "passages"}``.
* ``POST /v1/knowledge/{kb}/search``: ``{"query": ..., "top_k": 4}`` returns the best
  passages of the tenant's ``kb``, best first.
* ``GET /v1/knowledge/{kb}``: ``{"tenant", "kb", "passages"}``, the number of passages.

Errors are JSON ``{"error": ...}``: 401 without a known key, 403 for a key without the
``ingest`` role (or when the cluster has no keys), 400 for a malformed body or kb name, 413
over the body limit, 404 when the key's tenant has no knowledge base of that name (the same
answer whether another tenant has one of that name or nobody has), 502/503 when the
knowledge deployment fails or this gateway has none.

:class:`KnowledgeClient` is how the routes reach the store: :class:`LocalKnowledgeClient` over
an in-process :class:`~models.knowledge.base.KnowledgeStore`, :class:`KnowledgeHandleClient`
over the Knowledge deployment's Serve handle (:mod:`cluster.app`).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from deployments.gateway import ApiError
from deployments.remote import CALL_TIMEOUT_S, unwrap_error
from models.errors import AuthError, BackendUnavailable, ConfigError, InputError
from models.frames import Passage
from models.knowledge.base import Document, KnowledgeStore
from models.knowledge.qdrant import MAX_QUERY_CHARS

if TYPE_CHECKING:
    from deployments.gateway import Gateway

ROLE = "ingest"
MAX_DOCUMENTS = 2000
MAX_TEXT_CHARS = 2000
"""Longer passages are refused: the embedder reads about 256 tokens of each."""
MAX_SOURCE_CHARS = 200
INGEST_TIMEOUT_S = 300.0
KB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A knowledge base name: 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter
or digit (so no path segments, wildcards, whitespace or look-alike characters)."""


class DocumentIn(BaseModel):
    """One document to ingest."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                      description="The passage (or the question of a Q&A pair).")
    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS,
                        description="Where it comes from, e.g. a file name and heading.")
    answer: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS,
                               description="The curated answer of a Q&A pair.")


class SearchIn(BaseModel):
    """A search in one knowledge base."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="The question.")
    top_k: int = Field(4, ge=1, le=50, description="How many passages to return.")


_DOCUMENTS = TypeAdapter(list[DocumentIn])


class KnowledgeClient(Protocol):
    """The knowledge store as the Gateway reaches it (every call names the tenant)."""

    async def ingest(self, tenant: str, kb: str, documents: list[Document]) -> int:
        """Replace the tenant's ``kb`` with ``documents``; the number of passages stored."""

    async def search(self, tenant: str, kb: str, query: str, top_k: int) -> list[Passage]:
        """The best passages of the tenant's ``kb`` for ``query``."""

    async def count(self, tenant: str, kb: str) -> int:
        """The number of passages in the tenant's ``kb`` (0 when it has none)."""


class LocalKnowledgeClient:
    """A :class:`KnowledgeClient` over an in-process store (tests, single-process runs)."""

    def __init__(self, store: KnowledgeStore) -> None:
        self.store = store

    async def ingest(self, tenant: str, kb: str, documents: list[Document]) -> int:
        return await asyncio.to_thread(self.store.ingest, tenant, kb, documents)

    async def search(self, tenant: str, kb: str, query: str, top_k: int) -> list[Passage]:
        return await asyncio.to_thread(self.store.search, tenant, kb, query, top_k)

    async def count(self, tenant: str, kb: str) -> int:
        return await asyncio.to_thread(self.store.count, tenant, kb)


class KnowledgeHandleClient:
    """A :class:`KnowledgeClient` over the Knowledge deployment's Serve handle
    (:class:`~deployments.workers.KnowledgeWorker`)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def _call(self, method: str, timeout_s: float, *args: Any) -> Any:
        response = getattr(self.handle, method).remote(*args)
        try:
            return await asyncio.wait_for(response, timeout_s)
        except TimeoutError:
            response.cancel()
            raise BackendUnavailable(f"the Knowledge deployment did not answer {method} within "
                                     f"{timeout_s:.0f} s; retry later") from None
        except Exception as exc:
            raise unwrap_error(exc, "Knowledge") from None

    async def ingest(self, tenant: str, kb: str, documents: list[Document]) -> int:
        return await self._call("ingest", INGEST_TIMEOUT_S, tenant, kb, documents)

    async def search(self, tenant: str, kb: str, query: str, top_k: int) -> list[Passage]:
        return await self._call("search", CALL_TIMEOUT_S, tenant, kb, query, top_k)

    async def count(self, tenant: str, kb: str) -> int:
        return await self._call("count", CALL_TIMEOUT_S, tenant, kb)


def api_key(request: Request) -> str | None:
    """The API key of a request: ``X-API-Key``, else ``Authorization: Bearer <key>``."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def check_kb_name(kb: str) -> str:
    """``kb`` if it is a valid knowledge base name (see :data:`KB_NAME`), else 400."""
    if not KB_NAME.fullmatch(kb):
        raise ApiError(400, f"knowledge base name {kb[:80]!r} is not valid; use 1-64 ASCII "
                       "letters, digits, '.', '_' or '-', starting with a letter or digit")
    return kb


def _validation_message(exc: ValidationError, what: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
        if err.get("type") == "extra_forbidden" and err.get("loc", ("",))[-1] == "tenant":
            parts[-1] += " (the tenant is always the API key's own)"
    return f"invalid {what}: " + "; ".join(parts)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise ApiError(400, "the request body is empty; send JSON")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not JSON ({str(exc)[:80]}); send UTF-8 "
                       "JSON") from None


def parse_documents(data: Any) -> list[Document]:
    """The documents of an ingest body (a JSON list of {text, source, answer?}), or 400."""
    hint = "send a JSON list of {\"text\", \"source\"} objects (\"answer\" optional)"
    if not isinstance(data, list):
        raise ApiError(400, f"the body is a JSON {type(data).__name__}; {hint}")
    if not data:
        raise ApiError(400, f"the list of documents is empty; {hint}")
    if len(data) > MAX_DOCUMENTS:
        raise ApiError(400, f"{len(data)} documents in one request; send at most "
                       f"{MAX_DOCUMENTS} (or ingest a folder with `avatarctl kb ingest`)")
    try:
        docs = _DOCUMENTS.validate_python(data)
    except ValidationError as exc:
        raise ApiError(400, _validation_message(exc, "documents") + f"; {hint}") from None
    for i, doc in enumerate(docs):
        if not doc.text.strip():
            raise ApiError(400, f"document {i} has blank text; {hint}")
    return [Document(text=d.text, source=d.source, answer=d.answer) for d in docs]


def parse_search(data: Any) -> SearchIn:
    """The search of a body ``{"query", "top_k"}``, or 400."""
    try:
        search = SearchIn.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, _validation_message(exc, "search") +
                       "; send {\"query\": \"...\", \"top_k\": 4}") from None
    if not search.query.strip():
        raise ApiError(400, "the query is blank; send a question")
    return search


def _translate(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    error = unwrap_error(exc, "Knowledge")
    if isinstance(error, InputError | ConfigError):
        return ApiError(400, error.message)
    if isinstance(error, BackendUnavailable):
        return ApiError(503, error.message, {"Retry-After": "5"})
    return ApiError(502, error.message)  # unwrap_error made any other failure a BackendError


def _not_found(tenant: str, kb: str) -> ApiError:
    return ApiError(404, f"tenant {tenant!r} has no knowledge base {kb!r}; POST "
                    f"/v1/knowledge/{kb}/documents creates it")


def mount_knowledge_api(app: FastAPI, gateway: Gateway) -> None:
    """Add the ``/v1/knowledge`` routes over ``gateway.knowledge`` and ``gateway.api_keys``."""

    def tenant_of(request: Request) -> str:
        try:
            return gateway.api_keys.check(api_key(request), ROLE).tenant
        except AuthError as exc:
            gateway.metrics.rejection("unauthorized")
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise ApiError(exc.status, exc.message, headers) from None

    def client() -> KnowledgeClient:
        knowledge = getattr(gateway, "knowledge", None)
        if knowledge is None:
            raise ApiError(503, "this gateway has no knowledge deployment to reach (with "
                           "deployments.knowledge.colocate the renderers hold it); use "
                           "`avatarctl kb ingest`")
        return knowledge

    async def call(method: str, *args: Any) -> Any:
        knowledge = client()
        try:
            return await getattr(knowledge, method)(*args)
        except Exception as exc:
            raise _translate(exc) from None

    docs_schema = {"type": "array", "minItems": 1, "maxItems": MAX_DOCUMENTS,
                   "items": DocumentIn.model_json_schema()}

    @app.post("/v1/knowledge/{kb}/documents", summary="Replace a knowledge base's documents",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": docs_schema}}}})
    async def ingest(kb: str, request: Request) -> dict[str, Any]:
        """Replaces the API key tenant's knowledge base ``kb`` with the documents of the body
        (creating it). Needs an API key with the ``ingest`` role."""
        tenant = tenant_of(request)
        check_kb_name(kb)
        client()
        try:
            documents = parse_documents(await _json_body(request))
        except ApiError:
            gateway.metrics.rejection("bad_request")
            raise
        stored = await call("ingest", tenant, kb, documents)
        return {"tenant": tenant, "kb": kb, "passages": int(stored)}

    @app.post("/v1/knowledge/{kb}/search", summary="Search a knowledge base",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": SearchIn.model_json_schema()}}}})
    async def search(kb: str, request: Request) -> dict[str, Any]:
        """The best passages of the API key tenant's knowledge base ``kb``, best first."""
        tenant = tenant_of(request)
        check_kb_name(kb)
        client()
        try:
            body = parse_search(await _json_body(request))
        except ApiError:
            gateway.metrics.rejection("bad_request")
            raise
        hits = await call("search", tenant, kb, body.query, body.top_k)
        # Defence in depth: the store filters by tenant and kb; so do we, once more.
        mine = [p for p in hits if p.tenant == tenant and p.kb == kb]
        if not mine:  # a kb with passages always has a nearest one
            raise _not_found(tenant, kb)
        return {"tenant": tenant, "kb": kb, "passages": [
            {"text": p.text, "source": p.source, "score": round(float(p.score), 6),
             "answer": p.answer} for p in mine]}

    @app.get("/v1/knowledge/{kb}", summary="A knowledge base's size")
    async def count(kb: str, request: Request) -> dict[str, Any]:
        """The number of passages in the API key tenant's knowledge base ``kb``."""
        tenant = tenant_of(request)
        check_kb_name(kb)
        passages = int(await call("count", tenant, kb))
        if passages == 0:
            raise _not_found(tenant, kb)
        return {"tenant": tenant, "kb": kb, "passages": passages}
