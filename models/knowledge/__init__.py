"""Knowledge layer: embeddings and the tenant-scoped vector store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.registry import load_backend

if TYPE_CHECKING:
    from configs.schema import KnowledgeConfig
    from models.knowledge.base import Embedder, KnowledgeStore

EMBEDDERS = {"minilm": "models.knowledge.minilm:MiniLMEmbedder"}


def create_embedder(config: KnowledgeConfig) -> Embedder:
    return load_backend("knowledge.embedder", config.embedder, EMBEDDERS)()


def create_store(config: KnowledgeConfig, embedder: Embedder | None = None) -> KnowledgeStore:
    from models.knowledge.qdrant import QdrantKnowledgeStore

    return QdrantKnowledgeStore(config, embedder or create_embedder(config))
