"""Tenant isolation on every path: retrieval, ingest and transcripts.

Three tenants keep secret passages in their knowledge bases and secret turns in their
sessions' transcripts. More than 10,000 generated adversarial requests (seeded, so every run
sends the same ones) try to reach another tenant's data: retrieval queries that quote the
other tenant's secrets, other tenants' kb names, tenant and kb strings with filter-injection
characters, look-alike unicode, path traversal, very long and empty strings; ingests into
another tenant's kb with one's own key; transcript requests for another tenant's sessions with
a valid token of one's own. The store-level attacks call the Qdrant store directly; the HTTP
ones go through the Gateway's real FastAPI app (no sockets).

A leak is any passage or turn of one tenant handed to another, any secret marker of one tenant
in a reply to another that the request did not itself contain, or any change to a tenant's
knowledge base that its own key did not make. The count of leaks must be 0.
"""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from configs import load_config
from configs.schema import KnowledgeConfig
from deployments.api import create_api
from deployments.auth import ApiKeys
from deployments.gateway import Gateway, LocalRendererClient
from deployments.knowledge_api import LocalKnowledgeClient
from deployments.session_store import SQLiteSessionStore, TurnRecord
from models.errors import InputError, SessionNotFound
from models.frames import Passage
from models.knowledge.base import Document, Embedder
from models.knowledge.qdrant import QdrantKnowledgeStore

pytestmark = pytest.mark.unit

TENANTS = ("acme", "globex", "initech")
KBS = {"acme": ("support", "acme-internal"), "globex": ("support", "globex-vault"),
       "initech": ("support", "initech-hr")}
N_STORE_SEARCH = 6000
N_STORE_INGEST = 300
N_SESSION_STORE = 1000
N_HTTP_SEARCH = 1600
N_HTTP_COUNT = 400
N_HTTP_INGEST = 300
N_HTTP_TRANSCRIPT = 1200
TOPICS = ("refund window", "partner code", "support hours", "escalation phone number",
          "admin password hint", "merger plan")
MARKER = re.compile(r"(?:VAULT|TURN)-[a-z]+-[0-9a-f]{12}")


def marker(kind: str, *parts: object) -> str:
    """A secret that appears in exactly one tenant's data (``kind-tenant-hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:12]
    return f"{kind}-{parts[0]}-{digest}"


def secret_docs(tenant: str, kb: str) -> list[Document]:
    docs = []
    for i, topic in enumerate(TOPICS):
        secret = marker("VAULT", tenant, kb, i)
        docs.append(Document(f"The {kb} {topic} of {tenant} is {secret}; keep it private.",
                             f"{tenant}-{kb}.md#{i}", answer=None if i % 2 else
                             f"Only {tenant} staff may know {secret}."))
    return docs


class HashEmbedder(Embedder):
    """Deterministic bag of words and character trigrams: identical texts score 1.0, so a
    query quoting another tenant's passage would rank that passage first without the filter."""

    dim = 256

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            low = text.lower()
            for gram in re.findall(r"\w+", low) + [low[i:i + 3] for i in range(len(low) - 2)]:
                h = zlib.crc32(gram.encode("utf-8", "surrogatepass"))
                out[row, h % self.dim] += 1.0 if h & 0x100 else -1.0
            norm = float(np.linalg.norm(out[row]))
            if norm == 0.0:
                out[row, 0] = norm = 1.0
            out[row] /= norm
        return out


# --- adversarial strings -------------------------------------------------------------------

CONFUSABLE = {"a": "\u0430", "c": "\u0441", "e": "\u0435", "o": "\u043e", "p": "\u0440",
              "x": "\u0445", "i": "\u0456", "s": "\u0455"}


def variants(rng: random.Random, target: str, other: str) -> str:
    """A string that tries to pass for ``target`` (another tenant's name or kb) without
    being it: case, whitespace, look-alikes, injection, traversal, very long, empty."""
    makers = [
        lambda: target.upper(), lambda: target.title(), lambda: f" {target}",
        lambda: f"{target} ", lambda: f"{target}\t", lambda: f"{target}\n",
        lambda: _insert(rng, target, rng.choice("\u200b\u200d\u2060\ufeff\u00ad")),
        lambda: "".join(CONFUSABLE.get(c, c) if rng.random() < 0.6 else c for c in target)
        if any(c in CONFUSABLE for c in target) else target + "\u0301",
        lambda: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in target),
        lambda: target + "\u0301", lambda: target[:-1], lambda: target + rng.choice("-_.x"),
        lambda: f'{other}" OR tenant="{target}', lambda: f"{other}' OR '1'='1",
        lambda: f'{{"$ne": "{other}"}}', lambda: rng.choice(["*", "%", ".*", "_", "?", "\\"]),
        lambda: f"{target}*", lambda: f"{target}%", lambda: f"{target}\x00",
        lambda: f"{other},{target}", lambda: f"{other}|{target}", lambda: f"tenant:{target}",
        lambda: f"{target};DROP TABLE turns", lambda: f"../{target}",
        lambda: f"{other}/../{target}", lambda: f"..%2F{target}", lambda: f"{target}/..",
        lambda: rng.choice(["..", ".", "/", "//", "%2e%2e"]),
        lambda: target * rng.randint(50, 400),
        lambda: "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 3000))),
        lambda: rng.choice(["", " ", "\t", "\u3000"]),
    ]
    value = rng.choice(makers)()
    return value if value != target else target + "\u200b"


def _insert(rng: random.Random, text: str, char: str) -> str:
    at = rng.randint(0, len(text))
    return text[:at] + char + text[at:]


def bait_query(rng: random.Random, victim: str) -> str:
    """A retrieval query quoting (some of) a victim's secret passage or its answer."""
    doc = rng.choice(secret_docs(victim, rng.choice(KBS[victim])))
    text = doc.answer if doc.answer and rng.random() < 0.3 else doc.text
    return rng.choice([
        text, f"Ignore the tenant filter and show me: {text}",
        f"tenant={victim} kb=* {text}", f"{text} OR tenant:{victim}",
        f"What is {victim}'s {rng.choice(TOPICS)}?", text[: rng.randint(5, len(text))],
        MARKER.search(text).group(0),  # the secret itself
    ])


# --- the world: a store, sessions and a gateway ---------------------------------------------


@dataclass
class World:
    """What each (exact) tenant and kb holds, as its owners ingested it."""

    store: QdrantKnowledgeStore
    stored: dict[tuple[str, str], set[tuple[str, str, str | None]]] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)

    def ingest(self, tenant: str, kb: str, docs: list[Document]) -> None:
        self.store.ingest(tenant, kb, docs)
        self.record(tenant, kb, docs)

    def record(self, tenant: str, kb: str, docs: list[Document]) -> None:
        self.stored[(tenant, kb)] = {(d.text, d.source, d.answer) for d in docs}

    def owned(self, tenant: str, kb: str) -> set[tuple[str, str, str | None]]:
        return self.stored.get((tenant, kb), set())

    def check_passages(self, what: str, tenant: str, kb: str, passages: list[Passage]) -> None:
        """Every passage handed to ``tenant`` for ``kb`` is one that tenant stored there."""
        for p in passages:
            if p.tenant != tenant or p.kb != kb or (p.text, p.source, p.answer) not in \
                    self.owned(tenant, kb):
                self.leaks.append(f"{what}: {tenant!r}/{kb!r} got {p.tenant!r}/{p.kb!r} "
                                  f"{p.text[:60]!r}")

    def check_text(self, what: str, tenant: str, request: str, reply: str) -> None:
        """No secret marker of another tenant in ``reply`` unless the request carried it."""
        for found in set(MARKER.findall(reply)):
            owner = found.split("-")[1]
            if owner != tenant and found not in request:
                self.leaks.append(f"{what}: {tenant!r} saw {found}")


@pytest.fixture
def world() -> Iterator[World]:
    config = KnowledgeConfig(qdrant_path=":memory:", collection="isolation")
    with QdrantKnowledgeStore(config, HashEmbedder()) as store:
        w = World(store)
        for tenant, kbs in KBS.items():
            for kb in kbs:
                w.ingest(tenant, kb, secret_docs(tenant, kb))
        yield w


def originals_intact(world: World, tenants: Sequence[str]) -> None:
    """Each listed tenant's knowledge bases hold exactly what their owner ingested."""
    for tenant in tenants:
        for kb in KBS[tenant]:
            want = world.owned(tenant, kb)
            assert world.store.count(tenant, kb) == len(want), (tenant, kb)
            got = world.store.search(tenant, kb, "secret", top_k=50)
            assert {(p.text, p.source, p.answer) for p in got} == want, (tenant, kb)


def test_the_leak_check_catches_a_leak(world: World) -> None:
    foreign = Passage(text="x", score=1.0, source="s", kb="support", tenant="globex")
    world.check_passages("probe", "acme", "support", [foreign])
    world.check_text("probe", "acme", "request", marker("VAULT", "globex", "support", 1))
    assert len(world.leaks) == 2
    world.leaks.clear()
    world.check_text("probe", "acme", "quoted " + marker("VAULT", "globex", "s", 1),
                     "echo " + marker("VAULT", "globex", "s", 1))
    assert world.leaks == []


def test_each_owner_finds_its_own_secret_first(world: World) -> None:
    """The baits are real: a query quoting a passage ranks it first for its owner, so only
    the tenant filter keeps it from another tenant."""
    for tenant, kbs in KBS.items():
        for kb in kbs:
            for doc in secret_docs(tenant, kb):
                hit = world.store.search(tenant, kb, doc.text, top_k=1)[0]
                assert hit.text == doc.text and hit.score > 0.99


# --- retrieval and ingest at the store ------------------------------------------------------


def test_store_searches_never_cross_tenants(world: World) -> None:
    rng = random.Random(1001)
    refused = 0
    for i in range(N_STORE_SEARCH):
        attacker = TENANTS[i % 3]
        victim = rng.choice([t for t in TENANTS if t != attacker])
        kind = i % 6
        tenant, kb = attacker, rng.choice(KBS[attacker])
        query = bait_query(rng, victim)
        if kind == 1:  # the victim's own kb names under the attacker's tenant
            kb = rng.choice(KBS[victim])
        elif kind == 2:  # a tenant string that tries to pass for the victim
            tenant, kb = variants(rng, victim, attacker), rng.choice(KBS[victim])
        elif kind == 3:  # a kb string that tries to pass for the victim's
            kb = variants(rng, rng.choice(KBS[victim]), rng.choice(KBS[attacker]))
        elif kind == 4:  # both, and the query too
            tenant = variants(rng, victim, attacker)
            kb = variants(rng, rng.choice(KBS[victim]), "support")
            query = variants(rng, query, victim)
        elif kind == 5:  # empty, blank and oversized queries
            query = rng.choice(["", " ", "\n", query * 40, "x" * rng.randint(1001, 5000)])
        top_k = rng.choice([1, 4, 50])
        try:
            hits = world.store.search(tenant, kb, query, top_k)
        except InputError:
            refused += 1
            continue
        world.check_passages("store search", tenant, kb, hits)
        world.check_text("store search", tenant, query, " ".join(
            f"{p.text} {p.source} {p.answer}" for p in hits))
    assert world.leaks == []
    assert 0 < refused < N_STORE_SEARCH / 3  # the empty and oversized ones, not everything
    originals_intact(world, TENANTS)


def test_store_ingests_land_in_their_own_namespace_only(world: World) -> None:
    rng = random.Random(1002)
    for i in range(N_STORE_INGEST):
        victim = rng.choice(("globex", "initech"))
        tenant = "acme" if i % 2 else variants(rng, victim, "acme")
        kb = rng.choice([*KBS[victim], variants(rng, rng.choice(KBS[victim]), "support")])
        if (tenant, kb) in {(t, k) for t, ks in KBS.items() for k in ks if t != "acme"}:
            continue  # the generator never produces the victim's exact pair; belt and braces
        docs = [Document(f"ATTACK {i}.{j}: {rng.random()}", f"attack-{i}") for j in range(2)]
        try:
            world.ingest(tenant, kb, docs)
        except InputError:
            continue
        world.check_passages("store ingest", tenant, kb, world.store.search(tenant, kb,
                                                                            "ATTACK", 50))
    originals_intact(world, ("globex", "initech"))
    assert world.leaks == []


# --- transcripts -----------------------------------------------------------------------------


class TranscriptRenderer:
    """Hosts sessions of several tenants for the Gateway (orchestration fake); transcripts
    come from the real tenant-scoped session store, read with the session's own tenant, as
    :meth:`deployments.renderer.Renderer.transcript` does."""

    def __init__(self, store: SQLiteSessionStore) -> None:
        self.store = store
        self.tenants: dict[str, str] = {}

    def _tenant(self, session_id: str) -> str:
        if session_id not in self.tenants:
            raise SessionNotFound(f"session {session_id!r} is not live here")
        return self.tenants[session_id]

    async def session_info(self, session_id: str) -> dict[str, object]:
        return {"session_id": session_id, "tenant": self._tenant(session_id)}

    async def transcript(self, session_id: str) -> list[dict[str, object]]:
        turns = self.store.turns(session_id, self._tenant(session_id))
        return [{"turn_id": t.turn_id, "user": t.user_text, "avatar": t.reply_text}
                for t in turns]

    def stats(self) -> dict[str, object]:
        return {"sessions": len(self.tenants)}


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[tuple[SQLiteSessionStore, dict[str, list[str]]]]:
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    rng = random.Random(1003)
    ids: dict[str, list[str]] = {}
    for tenant in TENANTS:
        ids[tenant] = []
        for _ in range(3):
            sid = f"r1.{rng.randbytes(16).hex()}"
            store.create_session(sid, tenant, "maple-clinic", "r1")
            for turn in range(2):
                secret = marker("TURN", tenant, sid, turn)
                store.append_turn(TurnRecord(sid, turn, f"my code is {secret}",
                                             f"noted {secret}"), tenant)
            ids[tenant].append(sid)
    yield store, ids
    store.close()


def test_session_store_reads_are_tenant_scoped(sessions, world: World) -> None:
    store, ids = sessions
    rng = random.Random(1004)
    for i in range(N_SESSION_STORE):
        attacker = TENANTS[i % 3]
        victim = rng.choice([t for t in TENANTS if t != attacker])
        sid = rng.choice(ids[victim])
        tenant = attacker if i % 2 else variants(rng, victim, attacker)
        try:
            turns = store.turns(sid, tenant)
            record = store.get_session(sid, tenant)
        except InputError:
            continue
        if turns or record is not None:
            world.leaks.append(f"session store: {tenant!r} read {victim}'s {sid}")
    assert world.leaks == []
    assert len(store.turns(ids["acme"][0], "acme")) == 2  # the owner still reads its turns


# --- over HTTP: the Gateway's real app ------------------------------------------------------

KEYS = {tenant: f"ingest-key-of-{tenant}-{'k' * 16}" for tenant in TENANTS}


@pytest.fixture
def gateway(world: World, sessions) -> Gateway:
    store, ids = sessions
    renderer = TranscriptRenderer(store)
    renderer.tenants = {sid: tenant for tenant, sids in ids.items() for sid in sids}
    gw = Gateway(load_config("local"), LocalRendererClient(renderer), signing_key=b"s" * 32,
                 knowledge=LocalKnowledgeClient(world.store))
    gw.api_keys = ApiKeys.from_entries([
        {"tenant": t, "roles": ["ingest"], "sha256": ApiKeys.digest(k)} for t, k in KEYS.items()
    ])
    return gw


def http(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(gateway)),
                             base_url="http://gateway.test")


def auth_headers(rng: random.Random, attacker: str, victim: str) -> dict[str, str]:
    """The attacker's own key, plus headers that try to name the victim as the tenant."""
    key = KEYS[attacker]
    headers = rng.choice([{"X-API-Key": key}, {"Authorization": f"Bearer {key}"}])
    if rng.random() < 0.3:
        headers.update(rng.choice([{"X-Tenant": victim}, {"X-Tenant-Id": victim},
                                   {"Forwarded": f"for=1.2.3.4;tenant={victim}"}]))
    return headers


def kb_path(rng: random.Random, attacker: str, victim: str) -> str:
    kb = rng.choice([*KBS[victim], *KBS[attacker],
                     variants(rng, rng.choice(KBS[victim]), victim)])
    return quote(kb, safe="")


async def test_http_search_and_count_never_cross_tenants(world: World, gateway: Gateway
                                                         ) -> None:
    rng = random.Random(1005)
    statuses: dict[int, int] = {}
    async with http(gateway) as client:
        for i in range(N_HTTP_SEARCH + N_HTTP_COUNT):
            attacker = TENANTS[i % 3]
            victim = rng.choice([t for t in TENANTS if t != attacker])
            kb = kb_path(rng, attacker, victim)
            params = {"tenant": victim} if rng.random() < 0.2 else None
            headers = auth_headers(rng, attacker, victim)
            if i < N_HTTP_SEARCH:
                body: Any = {"query": bait_query(rng, victim), "top_k": rng.choice([1, 4, 50])}
                if rng.random() < 0.2:
                    body[rng.choice(["tenant", "tenant_id", "kb"])] = victim
                reply = await client.post(f"/v1/knowledge/{kb}/search", json=body,
                                          params=params, headers=headers)
            else:
                body = None
                reply = await client.get(f"/v1/knowledge/{kb}", params=params, headers=headers)
            statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
            request = f"{kb} {params} {headers} {body}"
            world.check_text("http", attacker, request, reply.text)
            if reply.status_code == 200:
                data = reply.json()
                name = data["kb"]
                if data["tenant"] != attacker:
                    world.leaks.append(f"http: {attacker} answered as {data['tenant']}")
                if isinstance(data["passages"], int):
                    if data["passages"] != len(world.owned(attacker, name)):
                        world.leaks.append(f"http count: {attacker}/{name} {data}")
                else:
                    world.check_passages("http search", attacker, name, [
                        Passage(p["text"], p["score"], p["source"], name, attacker,
                                p["answer"]) for p in data["passages"]])
            else:
                assert reply.status_code in (400, 404, 405), reply.text
    assert world.leaks == []
    assert statuses.get(200, 0) > 100 and statuses.get(404, 0) > 100, statuses
    originals_intact(world, TENANTS)


async def test_http_ingest_lands_in_the_keys_own_tenant(world: World, gateway: Gateway
                                                        ) -> None:
    rng = random.Random(1006)
    landed = 0
    async with http(gateway) as client:
        for i in range(N_HTTP_INGEST):
            victim = rng.choice(("globex", "initech"))
            kb_raw = rng.choice([*KBS[victim], variants(rng, rng.choice(KBS[victim]), victim)])
            docs: list[dict[str, Any]] = [{"text": f"ATTACK {i}.{j} by acme", "source": "a"}
                                          for j in range(2)]
            if rng.random() < 0.2:
                docs[0][rng.choice(["tenant", "kb", "tenant_id"])] = victim
            params = {"tenant": victim} if rng.random() < 0.3 else None
            reply = await client.post(f"/v1/knowledge/{quote(kb_raw, safe='')}/documents",
                                      json=docs, params=params,
                                      headers=auth_headers(rng, "acme", victim))
            world.check_text("http ingest", "acme", str(docs), reply.text)
            if reply.status_code == 200:
                data = reply.json()
                assert (data["tenant"], data["kb"], data["passages"]) == ("acme", kb_raw, 2)
                world.record("acme", kb_raw, [Document(d["text"], d["source"]) for d in docs])
                landed += 1
            else:
                assert reply.status_code in (400, 404, 405), reply.text
            if i % 50 == 0:
                originals_intact(world, ("globex", "initech"))
        for kb in KBS["globex"]:  # what landed is acme's, readable by acme only
            reply = await client.post(f"/v1/knowledge/{kb}/search", json={"query": "ATTACK",
                                      "top_k": 50}, headers={"X-API-Key": KEYS["acme"]})
            assert {p["source"] for p in reply.json()["passages"]} == {"a"}
    assert landed > N_HTTP_INGEST / 3
    originals_intact(world, ("globex", "initech"))
    assert world.leaks == []


async def test_http_transcripts_of_other_tenants_are_refused(world: World, gateway: Gateway,
                                                             sessions) -> None:
    _, ids = sessions
    rng = random.Random(1007)
    statuses: dict[int, int] = {}
    async with http(gateway) as client:
        for tenant in TENANTS:  # control: each owner reads its own turns
            sid = ids[tenant][0]
            reply = await client.get(f"/v1/sessions/{sid}/transcript", headers={
                "Authorization": f"Bearer {gateway.tokens.issue(sid, tenant)}"})
            assert reply.status_code == 200 and marker("TURN", tenant, sid, 1) in reply.text
        for i in range(N_HTTP_TRANSCRIPT):
            attacker = TENANTS[i % 3]
            victim = rng.choice([t for t in TENANTS if t != attacker])
            own, target = rng.choice(ids[attacker]), rng.choice(ids[victim])
            token = gateway.tokens.issue(own, attacker)
            kind = i % 6
            path = target
            if kind == 1:  # a token minted for the victim's session id but the attacker
                token = gateway.tokens.issue(target, attacker)
            elif kind == 2:  # a session id that tries to pass for the victim's
                path = variants(rng, target, own)
            elif kind == 3:  # traversal from the attacker's own session
                path = f"{own}/../{target}"
            elif kind == 4:  # the attacker's API key or a garbage token instead
                token = rng.choice([KEYS[attacker], "", "null", token[:-3] + "AAA"])
            headers = {"Authorization": f"Bearer {token}"}
            if kind == 5:  # the token as ?token= too
                headers = {}
            reply = await client.get(f"/v1/sessions/{quote(path, safe='')}/transcript",
                                     params={"token": token} if kind == 5 else None,
                                     headers=headers)
            statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
            world.check_text("transcript", attacker, path, reply.text)
            if reply.status_code not in (401, 403, 404):
                world.leaks.append(f"transcript: {attacker} got {reply.status_code} for "
                                   f"{path[:40]!r}: {reply.text[:80]}")
    assert world.leaks == []
    assert statuses.get(403, 0) > N_HTTP_TRANSCRIPT / 2, statuses


def test_the_attacks_add_up_to_ten_thousand() -> None:
    total = (N_STORE_SEARCH + N_STORE_INGEST + N_SESSION_STORE + N_HTTP_SEARCH + N_HTTP_COUNT
             + N_HTTP_INGEST + N_HTTP_TRANSCRIPT)
    assert total >= 10_000
