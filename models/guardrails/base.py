"""Guardrails: input and output rails per persona, as testable rule sets.

A blocked turn gets a short persona-appropriate refusal (``Verdict.reply``), never silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    text: str
    """The text to use: the input/output itself, possibly with personal data redacted."""
    rule: str | None = None
    """Which rule fired, e.g. ``topic:medical-advice``, ``injection``, ``system-prompt-leak``."""
    reply: str | None = None
    """What the avatar says instead, when blocked."""


class Guardrails(Protocol):
    """What the conductor needs of a rule set (:class:`models.guardrails.rails.Rails`)."""

    def check_input(self, text: str) -> Verdict: ...

    def check_output(self, text: str, user_text: str = "") -> Verdict: ...
