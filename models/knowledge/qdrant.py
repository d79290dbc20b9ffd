"""Tenant-scoped knowledge store on Qdrant: local mode (a directory) or a Qdrant server.

All tenants share one collection; every point carries ``tenant``, ``kb``, ``text``, ``source``
and ``answer`` in its payload. Every read (search, count) and every delete is built here with a
must-filter on tenant AND kb, so no caller can reach another tenant's passages, and results are
checked against the tenant once more before they are returned.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from models.errors import AvatarError, BackendError, BackendUnavailable, ConfigError, InputError
from models.frames import Passage
from models.knowledge.base import Document, Embedder, KnowledgeStore

if TYPE_CHECKING:
    from qdrant_client import QdrantClient, models

    from configs.schema import KnowledgeConfig

MAX_QUERY_CHARS = 1000
"""Longer queries are rejected: a spoken question is a sentence or two."""
UPSERT_BATCH = 64
_ID_NAMESPACE = uuid.UUID("6f1d3c1e-8a52-4b7e-9d4c-2f0a7e5b9c11")
T = TypeVar("T")


def point_id(tenant: str, kb: str, doc: Document) -> str:
    """A deterministic UUID for a document of a (tenant, kb): the same content keeps its id."""
    key = "\x1f".join((tenant, kb, doc.source, doc.text, doc.answer or ""))
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def _check_scope(tenant: str, kb: str) -> None:
    for name, value in (("tenant", tenant), ("kb", kb)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"a knowledge-base {name} is required (got {value!r})")


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class QdrantKnowledgeStore(KnowledgeStore):
    """One Qdrant collection (``config.collection``) holding every tenant's knowledge bases.

    ``config.qdrant_url`` selects a server; otherwise ``config.qdrant_path`` is a local-mode
    directory (one process at a time), or ``:memory:`` / ``None`` for an in-memory store.
    """

    def __init__(self, config: KnowledgeConfig, embedder: Embedder) -> None:
        try:
            from qdrant_client import QdrantClient, models
        except ImportError as exc:
            raise BackendUnavailable("the knowledge store needs qdrant-client "
                                     "(pip install qdrant-client)") from exc
        self._models = models
        self._embedder = embedder
        self._collection = config.collection
        self._default_top_k = config.top_k
        self._lock = threading.Lock()
        self._server = config.qdrant_url is not None
        self._client = self._connect(QdrantClient, config)
        try:
            self._ensure_collection()
        except BaseException:
            self._client.close()
            raise

    def _connect(self, client_cls: type[QdrantClient], config: KnowledgeConfig) -> QdrantClient:
        if config.qdrant_url is not None:
            where = config.qdrant_url
            kwargs: dict[str, object] = {"url": config.qdrant_url, "timeout": 10}
        elif config.qdrant_path in (None, ":memory:"):
            where = ":memory:"
            kwargs = {"location": ":memory:", "force_disable_check_same_thread": True}
        else:
            path = Path(config.qdrant_path)
            where = str(path)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendUnavailable(f"cannot create the Qdrant directory {path}: "
                                         f"{exc.strerror or exc}; set models.knowledge."
                                         f"qdrant_path to a writable directory") from exc
            kwargs = {"path": str(path), "force_disable_check_same_thread": True}
        try:
            return client_cls(**kwargs)  # type: ignore[arg-type]
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise BackendUnavailable(
                    f"the Qdrant directory {where} is in use by another process; stop it, set "
                    f"models.knowledge.qdrant_path to another directory, or use a Qdrant server "
                    f"(models.knowledge.qdrant_url)"
                ) from None
            raise BackendUnavailable(f"cannot open Qdrant at {where}: {exc}") from exc
        except Exception as exc:
            raise BackendUnavailable(f"cannot open Qdrant at {where}: {exc}") from exc

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Serialise client calls and turn SDK failures into :class:`BackendError`."""
        with self._lock:
            try:
                yield
            except AvatarError:
                raise
            except Exception as exc:
                raise BackendError(f"qdrant {what} failed on collection "
                                   f"{self._collection!r}: {exc}") from exc

    def _ensure_collection(self) -> None:
        m = self._models
        dim = self._embedder.dim
        with self._translated("collection setup"):
            if self._client.collection_exists(self._collection):
                info = self._client.get_collection(self._collection)
                vectors = info.config.params.vectors
                size = getattr(vectors, "size", None)
                if size is not None and size != dim:
                    raise ConfigError(
                        f"Qdrant collection {self._collection!r} holds {size}-d vectors but "
                        f"the embedder makes {dim}-d ones; set models.knowledge.collection "
                        f"to a new name or delete the collection")
            else:
                self._client.create_collection(
                    self._collection,
                    vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE),
                )
            if self._server:  # local mode has no payload indexes (it warns)
                for field in ("tenant", "kb"):
                    self._client.create_payload_index(
                        self._collection, field, field_schema=m.PayloadSchemaType.KEYWORD)

    def _scope(self, tenant: str, kb: str) -> models.Filter:
        m = self._models
        return m.Filter(must=[
            m.FieldCondition(key="tenant", match=m.MatchValue(value=tenant)),
            m.FieldCondition(key="kb", match=m.MatchValue(value=kb)),
        ])

    def ingest(
        self,
        tenant: str,
        kb: str,
        documents: Iterable[Document],
    ) -> int:
        """Replace the (tenant, kb) set with ``documents`` (embedded in batches).

        New points are written first and stale ones deleted after, so searches during a
        re-ingest never see an empty knowledge base. Identical documents are stored once.
        """
        _check_scope(tenant, kb)
        m = self._models
        ids: set[str] = set()
        for batch in _batches(documents, UPSERT_BATCH):
            for doc in batch:
                if not isinstance(doc, Document) or not doc.text.strip():
                    raise InputError(f"knowledge document {doc!r} has no text")
            # Q&A pairs: the question is embedded so that a spoken question matches it.
            vectors = self._embedder.embed([doc.text for doc in batch])
            points = []
            for doc, vector in zip(batch, vectors, strict=True):
                pid = point_id(tenant, kb, doc)
                ids.add(pid)
                points.append(m.PointStruct(id=pid, vector=vector.tolist(), payload={
                    "tenant": tenant, "kb": kb, "text": doc.text,
                    "source": doc.source, "answer": doc.answer,
                }))
            with self._translated("upsert"):
                self._client.upsert(self._collection, points=points, wait=True)
        stale = m.Filter(
            must=self._scope(tenant, kb).must,
            must_not=[m.HasIdCondition(has_id=sorted(ids))] if ids else None,
        )
        with self._translated("delete"):
            self._client.delete(self._collection, points_selector=m.FilterSelector(filter=stale),
                                wait=True)
        return len(ids)

    def search(self, tenant: str, kb: str, query: str, top_k: int | None = None) -> list[Passage]:
        """Best passages of this tenant's kb for ``query`` (cosine similarity), best first."""
        _check_scope(tenant, kb)
        if not isinstance(query, str) or not query.strip():
            raise InputError("the question is empty; say or type a question")
        if len(query) > MAX_QUERY_CHARS:
            raise InputError(f"the question is {len(query)} characters long; keep it under "
                             f"{MAX_QUERY_CHARS}")
        limit = self._default_top_k if top_k is None else top_k
        if not 1 <= limit <= 50:
            raise InputError(f"top_k must be between 1 and 50 (got {limit})")
        vector = self._embedder.embed([query.strip()])[0]
        with self._translated("search"):
            hits = self._client.query_points(
                self._collection, query=vector.tolist(), query_filter=self._scope(tenant, kb),
                limit=limit, with_payload=True,
            ).points
        passages = []
        for hit in hits:
            payload = hit.payload or {}
            if payload.get("tenant") != tenant or payload.get("kb") != kb:
                continue  # defence in depth: never hand out another tenant's passage
            passages.append(Passage(
                text=str(payload.get("text", "")), score=float(hit.score),
                source=str(payload.get("source", "")), kb=kb, tenant=tenant,
                answer=payload.get("answer"),
            ))
        return passages

    def count(self, tenant: str, kb: str) -> int:
        """Number of passages stored for this tenant's kb."""
        _check_scope(tenant, kb)
        with self._translated("count"):
            return int(self._client.count(self._collection, count_filter=self._scope(tenant, kb),
                                          exact=True).count)

    def close(self) -> None:
        """Release the client (and the local-mode directory lock). Safe to call twice."""
        with self._lock:
            try:
                self._client.close()
            except Exception:  # closing twice or a dropped server connection
                pass

    def __enter__(self) -> QdrantKnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
