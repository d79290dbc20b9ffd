"""Guardrail rule sets, each usable and testable on its own.

* :class:`TopicRules`: a persona's prohibited topics, by regular expression and, with an
  embedder, by semantic similarity to each topic's example requests.
* :class:`InjectionRule`: prompt-injection and jailbreak attempts (built-in patterns).
* :class:`PromptLeakRule`: replies that quote a long span of the system prompt.
* :class:`PersonalDataRule`: emails, phone numbers, card numbers and SSNs.

Topic and injection patterns see the normal form of the text (:func:`normalize`: lowercase,
apostrophes removed, other punctuation turned into spaces, fillers dropped), so a pattern
written as ``\\bwhats wrong with me\\b`` matches "What's wrong with me?" typed or spoken.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from configs.schema import GuardrailTopic
from models.errors import AvatarError, BackendError, ConfigError
from models.guardrails.injection import compile_injection
from models.guardrails.pii import PIIKind, PIIMatch, find_personal_data, redact
from models.guardrails.text import normalize, shingles
from models.knowledge.base import Embedder

SEMANTIC_MIN_WORDS = 3
"""Shorter inputs ("yes", "thank you") are not compared semantically: too little signal."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule fired: ``rule`` names it (``topic:politics``), ``reply`` is what to say instead."""

    rule: str
    reply: str
    score: float | None = None
    """Semantic similarity when the hit came from the embedder; None for a pattern match."""


class TopicRules:
    """Prohibited topics of one persona.

    Patterns are compiled once (case-insensitive) and run on the normalised text. With an
    ``embedder``, every topic's examples are embedded once here; :meth:`check_semantic` then
    blocks an input whose cosine similarity to any example reaches ``threshold``.
    """

    def __init__(
        self,
        topics: Sequence[GuardrailTopic],
        default_refusal: str,
        *,
        embedder: Embedder | None = None,
        threshold: float = 0.62,
    ) -> None:
        self.topics = tuple(topics)
        self.threshold = threshold
        self._embedder = embedder
        self._replies = {t.name: t.refusal or default_refusal for t in self.topics}
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for topic in self.topics:
            for pattern in topic.patterns:
                try:
                    self._patterns.append((topic.name, re.compile(pattern, re.IGNORECASE)))
                except re.error as exc:
                    raise ConfigError(
                        f"guardrails.blocked_topics[{topic.name}].patterns: {pattern!r} is not a "
                        f"valid regular expression ({exc}); fix or remove it"
                    ) from None
        self._example_topics: list[str] = [t.name for t in self.topics for _ in t.examples]
        self._example_texts: list[str] = [e for t in self.topics for e in t.examples]
        self._matrix: np.ndarray | None = None
        if embedder is not None and self._example_texts:
            self._matrix = _embed(embedder, self._example_texts)

    @property
    def semantic(self) -> bool:
        """True when semantic matching is active (an embedder and at least one example)."""
        return self._matrix is not None

    def check_patterns(self, normalized: str) -> Hit | None:
        """The first topic whose pattern matches the normalised text."""
        for name, pattern in self._patterns:
            if pattern.search(normalized):
                return Hit(f"topic:{name}", self._replies[name])
        return None

    def similarities(self, text: str) -> dict[str, float]:
        """Best cosine similarity of ``text`` to each topic's examples (empty without embedder)."""
        if self._matrix is None or self._embedder is None:
            return {}
        query = _embed(self._embedder, [text])[0]
        scores = self._matrix @ query
        best: dict[str, float] = {}
        for name, score in zip(self._example_topics, scores, strict=True):
            if score > best.get(name, -1.0):
                best[name] = float(score)
        return best

    def check_semantic(self, text: str) -> Hit | None:
        """The most similar topic when its similarity reaches the threshold."""
        if self._matrix is None or len(text.split()) < SEMANTIC_MIN_WORDS:
            return None
        scores = self.similarities(text)
        name, score = max(scores.items(), key=lambda kv: kv[1])
        if score < self.threshold:
            return None
        return Hit(f"topic:{name}", self._replies[name], score)

    def check(self, text: str, normalized: str | None = None) -> Hit | None:
        """Patterns first (cheap), then semantic similarity."""
        norm = normalize(text) if normalized is None else normalized
        return self.check_patterns(norm) or self.check_semantic(text)


def _embed(embedder: Embedder, texts: list[str]) -> np.ndarray:
    try:
        vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    except AvatarError:
        raise
    except Exception as exc:
        raise BackendError(f"guardrails: the embedder failed: {exc}") from exc
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class InjectionRule:
    """Prompt-injection and jailbreak attempts: instruction overrides, role-play takeovers,
    "developer mode", requests for the system prompt, chat-template markers, encoded payloads."""

    rule = "injection"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self._normalized, self._raw = compile_injection()

    def matches(self, text: str, normalized: str | None = None) -> bool:
        """True when ``text`` looks like an injection attempt."""
        norm = normalize(text) if normalized is None else normalized
        return any(p.search(norm) for p in self._normalized) or any(
            p.search(text) for p in self._raw
        )

    def check(self, text: str, normalized: str | None = None) -> Hit | None:
        return Hit(self.rule, self.reply) if self.matches(text, normalized) else None


class PromptLeakRule:
    """A reply leaks the system prompt when it reproduces ``min_words`` consecutive words of it
    (after normalisation). Word runs that also occur in ``public_texts`` (the greeting, the
    refusals: things the avatar is meant to say) or in the user's own turn are not leaks."""

    rule = "system-prompt-leak"

    def __init__(
        self,
        system_prompt: str,
        reply: str,
        *,
        min_words: int = 8,
        public_texts: Iterable[str] = (),
    ) -> None:
        if min_words < 2:
            raise ConfigError(f"guardrails: leak min_words must be at least 2, got {min_words}")
        self.reply = reply
        words = normalize(system_prompt).split()
        self.size = min(min_words, len(words))
        public: set[tuple[str, ...]] = set()
        for text in public_texts:
            public.update(shingles(normalize(text).split(), self.size))
        self._spans = set(shingles(words, self.size)) - public if self.size >= 4 else set()

    def leaked_span(self, output: str, user_text: str = "") -> str | None:
        """The first run of system-prompt words found in ``output`` (normalised, as long as
        it goes on), or None."""
        if not self._spans:
            return None
        user = set(shingles(normalize(user_text).split(), self.size)) if user_text else set()
        words = normalize(output).split()
        runs = [s in self._spans and s not in user for s in shingles(words, self.size)]
        if True not in runs:
            return None
        start = end = runs.index(True)
        while end + 1 < len(runs) and runs[end + 1]:
            end += 1
        return " ".join(words[start:end + self.size])

    def check(self, output: str, user_text: str = "") -> Hit | None:
        return Hit(self.rule, self.reply) if self.leaked_span(output, user_text) else None


_SPOKEN = {
    "email": "your email address",
    "phone": "your phone number",
    "card": "your card number",
    "ssn": "your Social Security number",
}
_OTHER = {"card": "a card number", "ssn": "a Social Security number"}
_INPUT = {"card": "[card number removed]", "ssn": "[SSN removed]"}


class PersonalDataRule:
    """Personal data in the conversation.

    Input: the user may give their own phone number or email, so the turn is allowed and
    flagged (``rule="personal-data"``); card numbers and SSNs are redacted from the text passed
    on (the front desk never needs them, and they must not reach the model or the logs).

    Output: the reply never echoes the user's email, phone, card number or SSN; each is
    replaced by a spoken-friendly phrase ("your phone number"). Card numbers and SSNs are
    removed from replies whatever their source. Other emails and phone numbers (the clinic's
    own contact details) are kept.
    """

    rule = "personal-data"
    ALWAYS_REDACTED: frozenset[PIIKind] = frozenset({"card", "ssn"})

    def find(self, text: str) -> list[PIIMatch]:
        """All personal data in ``text``."""
        return find_personal_data(text)

    def redact_input(self, text: str) -> tuple[str, list[PIIMatch]]:
        """(text with cards and SSNs replaced by markers, everything found)."""
        found = self.find(text)
        hidden = [m for m in found if m.kind in self.ALWAYS_REDACTED]
        return (redact(text, hidden, lambda m: _INPUT[m.kind]) if hidden else text), found

    def redact_output(self, text: str, user_text: str = "") -> tuple[str, list[PIIMatch]]:
        """(reply with echoed or always-redacted data replaced, the matches replaced)."""
        found = self.find(text)
        if not found:
            return text, []
        users = {m.value for m in self.find(user_text)} if user_text else set()
        hidden = [m for m in found if m.value in users or m.kind in self.ALWAYS_REDACTED]

        def phrase(m: PIIMatch) -> str:
            return _SPOKEN[m.kind] if m.value in users else _OTHER[m.kind]

        return (redact(text, hidden, phrase) if hidden else text), hidden
