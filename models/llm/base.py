"""LLM: streaming, cancellable reply tokens.

A backend implements :meth:`LLM.stream`. Cancelling the consuming task (barge-in) or leaving
the ``async for`` must stop generation; blocking backends get that from
:func:`models.streaming.iterate_in_thread`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from models.frames import Passage


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """Everything a backend may use: the chat (system prompt, history, the user's turn), the
    raw question and the retrieved passages (the ``kb`` backend answers from these)."""

    messages: tuple[ChatMessage, ...]
    question: str
    passages: tuple[Passage, ...] = ()
    fallback: str = "I'm sorry, I don't have that information."
    max_tokens: int = 160


def grounded_prompt(system_prompt: str, passages: tuple[Passage, ...]) -> str:
    """The system prompt plus the retrieved passages, for generative backends."""
    if not passages:
        return system_prompt
    facts = "\n".join(f"- {p.answer or p.text}" for p in passages)
    return f"{system_prompt}\n\nAnswer only from these facts; if they do not cover the " \
           f"question, say you don't know.\n{facts}"


class LLM(ABC):
    name: str = "llm"

    @abstractmethod
    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Yield text deltas as they are produced."""

    async def complete(self, request: LLMRequest) -> str:
        return "".join([delta async for delta in self.stream(request)])

    async def aclose(self) -> None:
        """Release engines, servers, connections."""
