"""Knowledge: embeddings and a tenant-scoped vector store.

Every query goes through :meth:`KnowledgeStore.search`, which always applies the tenant (and
knowledge-base) filter in our code: a caller cannot reach another tenant's passages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from models.frames import Passage


@dataclass(frozen=True, slots=True)
class Document:
    """A unit of knowledge to ingest: a passage, or a Q&A pair (``answer`` set)."""

    text: str
    source: str
    answer: str | None = None


class Embedder(ABC):
    dim: int

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""


class KnowledgeStore(ABC):
    @abstractmethod
    def ingest(self, tenant: str, kb: str, documents: Iterable[Document]) -> int:
        """Replace the (tenant, kb) knowledge base with ``documents``; returns the count."""

    @abstractmethod
    def search(self, tenant: str, kb: str, query: str, top_k: int = 4) -> list[Passage]:
        """Best passages of this tenant's kb for ``query``, best first."""

    @abstractmethod
    def count(self, tenant: str, kb: str) -> int: ...

    def close(self) -> None:
        """Release the store (local Qdrant holds a lock on its directory)."""
