"""The Gateway's knowledge API: ingest, search and count by an ``ingest`` API key, and every
way a request is refused (401, 403, 400, 413, 404, 502/503) with a message that says why."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from configs import load_config
from configs.schema import KnowledgeConfig
from deployments.api import create_api
from deployments.auth import ApiKeys
from deployments.gateway import Gateway, LocalRendererClient
from deployments.knowledge_api import (
    MAX_DOCUMENTS,
    KnowledgeHandleClient,
    LocalKnowledgeClient,
)
from deployments.limits import INGEST_LIMIT_BYTES
from deployments.workers import KnowledgeWorker
from models.errors import BackendError, InputError
from models.frames import Passage
from models.knowledge.base import Document, Embedder
from models.knowledge.qdrant import QdrantKnowledgeStore

pytestmark = pytest.mark.unit

ACME_INGEST = "acme-ingest-key-0123456789abcdef"
ACME_CLIENT = "acme-client-key-0123456789abcdef"
ACME_ADMIN = "acme-admin-key-0123456789abcdef"
GLOBEX_INGEST = "globex-ingest-key-0123456789abcd"
DOCS = [{"text": "Acme support is open from 9 to 5 on weekdays.", "source": "hours.md"},
        {"text": "The Acme refund window is 30 days.", "source": "refunds.md"},
        {"text": "How do I reset my password?", "source": "faq.yaml#1",
         "answer": "Use the Forgot password link."}]


class WordEmbedder(Embedder):
    """Deterministic bag-of-words vectors (enough to rank a quoted passage first)."""

    dim = 64

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-6)
        return out


@pytest.fixture
def store() -> Iterator[QdrantKnowledgeStore]:
    with QdrantKnowledgeStore(KnowledgeConfig(qdrant_path=":memory:"), WordEmbedder()) as s:
        s.ingest("globex", "faq", [Document("Globex's vault code is GLOBEX-9902.", "v.md")])
        yield s


def make_gateway(knowledge: Any) -> Gateway:
    gateway = Gateway(load_config("local"), LocalRendererClient(None), signing_key=b"s" * 32,
                      knowledge=knowledge)
    gateway.api_keys = ApiKeys.from_entries([
        {"tenant": "acme", "roles": ["ingest"], "sha256": ApiKeys.digest(ACME_INGEST)},
        {"tenant": "acme", "roles": ["client"], "sha256": ApiKeys.digest(ACME_CLIENT)},
        {"tenant": "acme", "roles": ["admin"], "sha256": ApiKeys.digest(ACME_ADMIN)},
        {"tenant": "globex", "roles": ["ingest"], "sha256": ApiKeys.digest(GLOBEX_INGEST)},
    ])
    return gateway


def client_for(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(gateway)),
                             base_url="http://gateway.test")


@pytest.fixture
async def api(store: QdrantKnowledgeStore) -> httpx.AsyncClient:
    async with client_for(make_gateway(LocalKnowledgeClient(store))) as c:
        yield c


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


async def test_ingest_count_and_search_round_trip(api: httpx.AsyncClient,
                                                  store: QdrantKnowledgeStore) -> None:
    reply = await api.post("/v1/knowledge/faq/documents", json=DOCS,
                           headers={"Authorization": f"Bearer {ACME_INGEST}"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"tenant": "acme", "kb": "faq", "passages": 3}
    assert (await api.get("/v1/knowledge/faq", headers=key(ACME_INGEST))).json() == \
        {"tenant": "acme", "kb": "faq", "passages": 3}
    reply = await api.post("/v1/knowledge/faq/search", headers=key(ACME_INGEST),
                           json={"query": "I forgot my password, how do I reset it", "top_k": 2})
    assert reply.status_code == 200, reply.text
    best = reply.json()["passages"][0]
    assert (best["text"], best["answer"]) == ("How do I reset my password?",
                                              "Use the Forgot password link.")
    assert len(reply.json()["passages"]) == 2
    assert store.count("globex", "faq") == 1  # the other tenant's kb of the same name


async def test_a_reingest_replaces_the_knowledge_base(api: httpx.AsyncClient) -> None:
    await api.post("/v1/knowledge/faq/documents", json=DOCS, headers=key(ACME_INGEST))
    reply = await api.post("/v1/knowledge/faq/documents", json=DOCS[:1],
                           headers=key(ACME_INGEST))
    assert reply.json()["passages"] == 1
    assert (await api.get("/v1/knowledge/faq", headers=key(ACME_INGEST))).json()["passages"] == 1


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/knowledge/faq/documents"), ("POST", "/v1/knowledge/faq/search"),
    ("GET", "/v1/knowledge/faq"),
])
async def test_every_route_needs_a_known_ingest_key(api: httpx.AsyncClient,
                                                    store: QdrantKnowledgeStore,
                                                    method: str, path: str) -> None:
    body = DOCS if path.endswith("documents") else {"query": "vault code"}
    cases = [({}, 401, "API key with the ingest role"),
             ({"Authorization": "Bearer "}, 401, "API key"),
             (key("not-a-key"), 401, "unknown API key"),
             ({"Authorization": "Basic " + ACME_INGEST}, 401, "API key"),
             (key(ACME_CLIENT), 403, "lacks the ingest role"),
             (key(ACME_ADMIN), 403, "lacks the ingest role")]
    for headers, status, words in cases:
        reply = await api.request(method, path, json=body if method == "POST" else None,
                                  headers=headers)
        assert reply.status_code == status, (headers, reply.text)
        assert words in reply.json()["error"]
        if status == 401:
            assert reply.headers["www-authenticate"] == "Bearer"
    assert store.count("acme", "faq") == 0


async def test_no_keys_configured_closes_the_routes(store: QdrantKnowledgeStore) -> None:
    gateway = make_gateway(LocalKnowledgeClient(store))
    gateway.api_keys = ApiKeys({})
    async with client_for(gateway) as api:
        reply = await api.get("/v1/knowledge/faq", headers=key(ACME_INGEST))
    assert reply.status_code == 403 and "no API keys" in reply.json()["error"]


async def test_an_oversized_ingest_is_refused_before_it_is_read(
        api: httpx.AsyncClient, store: QdrantKnowledgeStore) -> None:
    big = [{"text": "x" * 1900, "source": "big.md"}] * (INGEST_LIMIT_BYTES // 1900 + 2)
    reply = await api.post("/v1/knowledge/faq/documents", json=big, headers=key(ACME_INGEST))
    assert reply.status_code == 413
    assert f"at most {INGEST_LIMIT_BYTES} bytes" in reply.json()["error"]
    assert store.count("acme", "faq") == 0
    many = [{"text": f"d{i}", "source": "s"} for i in range(MAX_DOCUMENTS + 1)]
    reply = await api.post("/v1/knowledge/faq/documents", json=many, headers=key(ACME_INGEST))
    assert reply.status_code == 400 and f"at most {MAX_DOCUMENTS}" in reply.json()["error"]


@pytest.mark.parametrize("body, words", [
    (b"", "empty"),
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (json.dumps({"documents": DOCS}).encode(), "JSON dict"),
    (b"[]", "empty"),
    (json.dumps([{"source": "a.md"}]).encode(), "0.text: Field required"),
    (json.dumps([{"text": "t"}]).encode(), "0.source: Field required"),
    (json.dumps([{"text": 5, "source": "a"}]).encode(), "0.text"),
    (json.dumps([{"text": "t", "source": "a", "tenant": "globex"}]).encode(),
     "the tenant is always the API key's own"),
    (json.dumps([{"text": "x" * 2001, "source": "a"}]).encode(), "0.text"),
    (json.dumps([{"text": "   ", "source": "a"}]).encode(), "blank text"),
    (json.dumps(["just text"]).encode(), "0:"),
])
async def test_malformed_ingest_bodies_get_a_clear_400(api: httpx.AsyncClient,
                                                       store: QdrantKnowledgeStore,
                                                       body: bytes, words: str) -> None:
    reply = await api.post("/v1/knowledge/faq/documents", content=body,
                           headers={**key(ACME_INGEST), "Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]
    assert store.count("acme", "faq") == 0


@pytest.mark.parametrize("body, words", [
    ({}, "query: Field required"),
    ({"query": ""}, "query"),
    ({"query": "   "}, "blank"),
    ({"query": "q" * 1001}, "query"),
    ({"query": "hours", "top_k": 0}, "top_k"),
    ({"query": "hours", "top_k": 51}, "top_k"),
    ({"query": "hours", "tenant": "globex"}, "the tenant is always the API key's own"),
    (["hours"], "invalid search"),
])
async def test_malformed_searches_get_a_clear_400(api: httpx.AsyncClient, body: Any,
                                                  words: str) -> None:
    await api.post("/v1/knowledge/faq/documents", json=DOCS, headers=key(ACME_INGEST))
    reply = await api.post("/v1/knowledge/faq/search", json=body, headers=key(ACME_INGEST))
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]


@pytest.mark.parametrize("kb", ["faq%20", "f%C3%A4q", "-faq", "f*q", "%2E%2E", "a" * 65,
                                "faq%00", "%D0%BEfaq"])
async def test_invalid_kb_names_are_refused(api: httpx.AsyncClient, kb: str) -> None:
    reply = await api.get(f"/v1/knowledge/{kb}", headers=key(ACME_INGEST))
    assert reply.status_code == 400, reply.text
    assert "not valid" in reply.json()["error"]


async def test_another_tenants_kb_looks_exactly_like_a_missing_one(
        api: httpx.AsyncClient) -> None:
    """globex has a kb "faq", acme has none: acme's key gets the same 404 for it as for a kb
    nobody has, so nothing tells acme that globex's exists."""
    replies = {}
    for kb in ("faq", "nothing-here"):
        count = await api.get(f"/v1/knowledge/{kb}", headers=key(ACME_INGEST))
        search = await api.post(f"/v1/knowledge/{kb}/search", headers=key(ACME_INGEST),
                                json={"query": "vault code GLOBEX-9902"})
        assert count.status_code == search.status_code == 404
        replies[kb] = (count.json()["error"].replace(kb, "KB"),
                       search.json()["error"].replace(kb, "KB"))
    assert replies["faq"] == replies["nothing-here"]
    assert "tenant 'acme' has no knowledge base 'KB'" in replies["faq"][0]
    own = await api.get("/v1/knowledge/faq", headers=key(GLOBEX_INGEST))
    assert own.json() == {"tenant": "globex", "kb": "faq", "passages": 1}


class FailingStore(QdrantKnowledgeStore):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def search(self, *args: object, **kwargs: object) -> list[Passage]:
        raise self.error

    def count(self, *args: object) -> int:
        raise self.error


@pytest.mark.parametrize("error, status, words", [
    (BackendError("qdrant search failed"), 502, "qdrant search failed"),
    (InputError("the question is empty"), 400, "the question is empty"),
    (RuntimeError("boom"), 502, "Knowledge deployment failed (RuntimeError)"),
])
async def test_store_failures_become_their_status(error: Exception, status: int, words: str
                                                  ) -> None:
    async with client_for(make_gateway(LocalKnowledgeClient(FailingStore(error)))) as api:
        reply = await api.post("/v1/knowledge/faq/search", json={"query": "hours"},
                               headers=key(ACME_INGEST))
    assert reply.status_code == status
    assert words in reply.json()["error"]


async def test_a_gateway_without_knowledge_answers_503() -> None:
    async with client_for(make_gateway(None)) as api:
        reply = await api.get("/v1/knowledge/faq", headers=key(ACME_INGEST))
    assert reply.status_code == 503 and "knowledge" in reply.json()["error"]


# --- over the Knowledge deployment's handle ---------------------------------------------------


class Response:
    """The shape of a Serve DeploymentResponse: awaitable, cancellable."""

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.cancelled = False

    def __await__(self) -> Any:
        return self.coro.__await__()

    def cancel(self) -> None:
        self.cancelled = True


class Handle:
    """The shape of a Serve DeploymentHandle over an in-process deployment object."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)
        return type("Method", (), {"remote": staticmethod(
            lambda *args: Response(method(*args)))})()


class RayTaskError(Exception):
    """What a Serve call raises for an exception on the replica (``cause`` carries it)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def test_the_handle_client_ingests_through_the_knowledge_worker(tmp_path: Path) -> None:
    config = load_config("local", overrides={"models": {"knowledge": {
        "qdrant_path": str(tmp_path / "qdrant")}}})
    worker = KnowledgeWorker(config, embedder=WordEmbedder())
    try:
        async with client_for(make_gateway(KnowledgeHandleClient(Handle(worker)))) as api:
            reply = await api.post("/v1/knowledge/faq/documents", json=DOCS,
                                   headers=key(ACME_INGEST))
            assert reply.json() == {"tenant": "acme", "kb": "faq", "passages": 3}
            assert worker.store.count("acme", "faq") == 3
            reply = await api.post("/v1/knowledge/faq/search", headers=key(ACME_INGEST),
                                   json={"query": "refund window", "top_k": 1})
            assert reply.json()["passages"][0]["source"] == "refunds.md"
            # the configured tenant's kb was ingested at start and is not acme's
            missing = await api.get("/v1/knowledge/maple-clinic", headers=key(ACME_INGEST))
            assert missing.status_code == 404
            assert worker.store.count("maple", "maple-clinic") > 0
    finally:
        worker.close()


async def test_the_handle_client_unwraps_replica_errors_and_times_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Replica:
        async def search(self, *args: object) -> list[Passage]:
            raise RayTaskError(InputError("top_k must be between 1 and 50"))

        async def count(self, *args: object) -> int:
            import asyncio

            await asyncio.sleep(10)
            return 0

    import deployments.knowledge_api as knowledge_api

    monkeypatch.setattr(knowledge_api, "CALL_TIMEOUT_S", 0.05)
    async with client_for(make_gateway(KnowledgeHandleClient(Handle(Replica())))) as api:
        reply = await api.post("/v1/knowledge/faq/search", json={"query": "hours"},
                               headers=key(ACME_INGEST))
        assert reply.status_code == 400 and "top_k" in reply.json()["error"]
        reply = await api.get("/v1/knowledge/faq", headers=key(ACME_INGEST))
        assert reply.status_code == 503 and "did not answer" in reply.json()["error"]
