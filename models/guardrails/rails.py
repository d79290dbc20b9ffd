"""Input and output rails of one persona, composed from the rule sets in :mod:`rules`.

Input rail, in order: prohibited-topic patterns, prompt injection, then (with an embedder)
semantic similarity to the topics' examples. The first rule that fires blocks the turn with the
topic's refusal or the persona's default refusal. A turn that passes but carries personal data
is allowed and flagged (``rule="personal-data"``), with card numbers and SSNs redacted.

Output rail: a reply quoting the system prompt is blocked; a reply echoing the user's personal
data is allowed with that data redacted (``rule="personal-data"``).
"""

from __future__ import annotations

from configs.schema import PersonaConfig
from models.errors import ConfigError
from models.guardrails.base import Verdict
from models.guardrails.rules import (
    Hit,
    InjectionRule,
    PersonalDataRule,
    PromptLeakRule,
    TopicRules,
)
from models.guardrails.text import normalize
from models.knowledge.base import Embedder


class Rails:
    """Guardrails of ``persona``: ``check_input`` before the model, ``check_output`` after.

    ``embedder`` (optional) adds semantic topic matching; the topics' examples are embedded
    once, here. ``leak_min_words`` is the length of the shortest system-prompt quote blocked.
    """

    def __init__(
        self,
        persona: PersonaConfig,
        embedder: Embedder | None = None,
        *,
        leak_min_words: int = 8,
    ) -> None:
        config = persona.guardrails
        if not config.refusal.strip():
            raise ConfigError(f"persona {persona.name!r}: guardrails.refusal is empty; a blocked "
                              f"turn must get a reply, so set a short refusal sentence")
        self.persona = persona
        self.refusal = config.refusal
        self.topics = TopicRules(
            config.blocked_topics,
            config.refusal,
            embedder=embedder,
            threshold=config.semantic_threshold,
        )
        self.injection = InjectionRule(config.refusal) if config.injection else None
        public = (
            persona.greeting, persona.fallback, persona.apology, config.refusal,
            *(t.refusal for t in config.blocked_topics if t.refusal),
        )
        self.leak = (
            PromptLeakRule(persona.system_prompt, config.refusal, min_words=leak_min_words,
                           public_texts=public)
            if config.system_prompt_leak else None
        )
        self.personal_data = PersonalDataRule() if config.personal_data else None

    def check_input(self, text: str) -> Verdict:
        """Whether the user's turn may go to the model, and the text to send."""
        normalized = normalize(text)
        if not normalized:
            return Verdict(True, text)
        hit = self.topics.check_patterns(normalized)
        if hit is None and self.injection is not None:
            hit = self.injection.check(text, normalized)
        if hit is None:
            hit = self.topics.check_semantic(text)
        if hit is not None:
            return _blocked(text, hit)
        if self.personal_data is not None:
            redacted, found = self.personal_data.redact_input(text)
            if found:
                return Verdict(True, redacted, self.personal_data.rule)
        return Verdict(True, text)

    def check_output(self, text: str, user_text: str = "") -> Verdict:
        """Whether the model's reply may be spoken, and the text to speak."""
        if self.leak is not None:
            hit = self.leak.check(text, user_text)
            if hit is not None:
                return _blocked(text, hit)
        if self.personal_data is not None:
            redacted, hidden = self.personal_data.redact_output(text, user_text)
            if hidden:
                return Verdict(True, redacted, self.personal_data.rule)
        return Verdict(True, text)


def _blocked(text: str, hit: Hit) -> Verdict:
    return Verdict(False, text, hit.rule, hit.reply)
