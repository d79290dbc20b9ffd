"""LLM layer: streaming, cancellable reply generation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.registry import load_backend

if TYPE_CHECKING:
    from configs.schema import LLMConfig
    from models.llm.base import LLM

BACKENDS = {
    "kb": "models.llm.kb:KnowledgeAnswerer",
    "openai": "models.llm.openai:OpenAICompatibleLLM",
    "llamacpp": "models.llm.llamacpp:LlamaCppLLM",
    "vllm": "models.llm.vllm:VLLMEngine",
}


def create_llm(config: LLMConfig) -> LLM:
    return load_backend("llm", config.backend, BACKENDS)(config)
