"""The default brain: a retrieval-grounded answerer that speaks only what the knowledge base says.

No instruction-tuned LLM ships on PyPI, so the embedded default answers from the passages the
caller retrieved (``LLMRequest.passages``) and never from anywhere else:

1. nothing retrieved scores at least ``min_answer_score``: say ``request.fallback``;
2. otherwise score the candidates of the passages near the top, i.e. each curated Q&A answer
   (whole) and each passage sentence, by retrieval similarity, word overlap with the question
   (weighted by rarity among the candidates), a bonus when it holds the kind of fact asked for
   (a price for "how much", a time for "when") and a small preference for curated answers;
3. a candidate must share a content word with the question unless its passage matched very
   closely; with none left, say the fallback;
4. say the winning Q&A answer as it is, or the winning sentence plus at most one sentence of
   the same paragraph that completes it.

It takes well under a millisecond and streams the reply in word groups with no delay.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from configs.schema import LLMConfig
from models.frames import Passage
from models.knowledge.ingest import split_context
from models.llm.base import LLM, LLMRequest

QA_PRIOR = 0.08
"""Curated Q&A answers are preferred over extracted sentences by this much."""
PASSAGE_WINDOW = 0.12
"""Sentences are drawn from passages scoring within this much of the best one."""
OVERLAP_WEIGHT = 0.35
STRONG_MATCH = 0.2
"""A passage this far above ``min_answer_score`` counts even with no word in common with the
question; below it, an answer must share a content word with the question (so "what time is
it in Tokyo" does not get the opening hours)."""
SECOND_SENTENCE_MARGIN = 0.08
MAX_REPLY_CHARS = 320
WORDS_PER_DELTA = 3

_STOPWORDS = frozenset("""
a an and are as at be been but by can could do does did for from get got have has how i i'm if
in into is it it's its just me my of on or our please so that the their them there these they
this to us was we were what when where which who why will with would you your you're hi hello
guys hey okay ok um uh like need want know tell there's should much many any some one
take go come make see also am
""".split())
_ABBREVIATIONS = ("dr.", "mr.", "mrs.", "ms.", "st.", "e.g.", "i.e.", "vs.")
_TOKEN = re.compile(r"[a-z0-9]+(?:[:'][a-z0-9]+)*")
_TIME = re.compile(r"\b\d{1,2}(?::\d{2})?\s*[ap]\.m\.|\bnoon\b|\bmidnight\b|"
                   r"\b(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b", re.I)
_MONEY = re.compile(r"\$\s*\d|\bdollars?\b|\bfree\b|\bno (?:copay|charge|cost)\b", re.I)
_PLACE = re.compile(r"\b\d+\s+\w+(?:\s\w+)?\s+(?:avenue|lane|street|drive|road|suite)\b|"
                    r"\bnext door\b|\bblock from\b", re.I)
_PHONE = re.compile(r"\(\d{3}\)\s*[\d-]{7,}|\b\d-\d{3}-\d{3}-\d{4}\b|\b911\b|\b988\b")
_DURATION = re.compile(r"\b\d+\s+(?:to\s+\d+\s+)?(?:business\s+)?(?:minutes?|hours?|days?|"
                       r"weeks?|months?)\b", re.I)
_ASKS = (
    (re.compile(r"\b(how much|cost|price|fee|charge|pay|expensive)\b", re.I), _MONEY),
    (re.compile(r"\b(what time|when|hours?|open|close|closing|late|early|days?)\b", re.I), _TIME),
    (re.compile(r"\b(where|address|located|location|directions)\b", re.I), _PLACE),
    (re.compile(r"\b(phone|number|call)\b", re.I), _PHONE),
    (re.compile(r"\b(how long|how soon|how early|take)\b", re.I), _DURATION),
)
FACT_BONUS = 0.12


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


_SYNONYMS = {
    "medicine": ("pill", "medication", "med", "prescription", "drug", "tablet", "refill"),
    "doctor": ("provider", "physician", "dr", "doc"),
    "child": ("kid", "children", "son", "daughter", "baby", "pediatric", "pediatrician"),
    "cost": ("price", "fee", "charge", "dollar", "expensive"),
    "month": ("monthly",),
    "week": ("weekly",),
    "day": ("daily",),
    "pet": ("dog", "cat", "animal"),
    "clinic": ("office", "practice"),
    "sick": ("ill", "illness", "unwell"),
    "portal": ("mapleconnect", "app", "account"),
}
_CANONICAL = {alias: word for word, aliases in _SYNONYMS.items() for alias in aliases}


def content_words(text: str) -> set[str]:
    """Lower-cased, lightly stemmed words of ``text`` without stop words; a few everyday
    synonyms (pills, medication -> medicine) share one form."""
    words = set()
    for token in _TOKEN.findall(text.lower()):
        if token not in _STOPWORDS:
            stem = _stem(token)
            words.add(_CANONICAL.get(stem, stem))
    return words


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage; abbreviations such as ``Dr.`` and ``a.m.`` mid-sentence are kept."""
    sentences: list[str] = []
    current: list[str] = []
    words = text.split()
    for i, word in enumerate(words):
        current.append(word)
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if not word.endswith((".", "!", "?")) or not nxt:
            continue
        if word.lower() in _ABBREVIATIONS or not (nxt[0].isupper() or nxt[0].isdigit()):
            continue
        sentences.append(" ".join(current))
        current = []
    if current:
        sentences.append(" ".join(current))
    return sentences


@dataclass(frozen=True, slots=True)
class _Candidate:
    text: str
    score: float
    passage: int
    position: int
    whole: bool = False
    """A curated Q&A answer, said as it is."""
    lexical: bool = False
    """Shares at least one content word with the question."""
    strong: bool = False
    """Its passage matched the question closely enough on meaning alone."""
    words: frozenset[str] = frozenset()


def _speakable(text: str) -> str:
    text = re.sub(r"[*_`#>|]+", "", text)
    return re.sub(r"\s+", " ", text).strip()


class KnowledgeAnswerer(LLM):
    """Answers only from ``request.passages``; below ``config.min_answer_score`` it says
    ``request.fallback`` instead of guessing."""

    name = "kb"

    def __init__(self, config: LLMConfig | None = None) -> None:
        self.config = config or LLMConfig()
        self.min_score = self.config.min_answer_score

    def answer(self, question: str, passages: Sequence[Passage]) -> str | None:
        """The grounded reply for ``question``, or None when the passages do not cover it."""
        ranked = sorted(passages, key=lambda p: p.score, reverse=True)
        if not ranked or ranked[0].score < self.min_score:
            return None
        every = sorted(self._candidates(question, ranked), key=lambda c: c.score, reverse=True)
        grounded = [c for c in every if c.lexical or c.strong]
        if not grounded:
            return None
        best = grounded[0]
        if best.whole:
            return _speakable(best.text)
        same = [c for c in every if c is not best and c.passage == best.passage
                and len(best.text) + len(c.text) + 1 <= MAX_REPLY_CHARS]
        asked = content_words(question)
        second = next((c for c in same if c.score >= best.score - SECOND_SENTENCE_MARGIN), None)
        if second is None:
            # A neighbouring sentence on the same subject completes the answer ("If you have an
            # emergency, call 911." before "Emergencies include chest pain...").
            second = next((c for c in same if abs(c.position - best.position) == 1
                           and c.words & (asked | best.words)), None)
        chosen = [best] if second is None else [best, second]
        chosen.sort(key=lambda c: c.position)
        return _speakable(" ".join(c.text for c in chosen))

    def _candidates(self, question: str, ranked: list[Passage]) -> list[_Candidate]:
        """Score every Q&A answer and passage sentence of the passages near the top."""
        floor = max(self.min_score, ranked[0].score - PASSAGE_WINDOW)
        strong = self.min_score + STRONG_MATCH
        near = [p for p in ranked if p.score >= floor]
        units = [content_words(f"{p.text} {p.answer or ''}") for p in near]
        asked = content_words(question)
        weight = {w: math.log(1.0 + len(units) / (1 + sum(w in u for u in units))) for w in asked}
        total = sum(weight.values()) or 1.0
        wanted = [fact for ask, fact in _ASKS if ask.search(question)]

        def overlap(words: set[str]) -> float:
            return sum(weight[w] for w in asked & words) / total

        def bonus(text: str) -> float:
            return FACT_BONUS if any(f.search(text) for f in wanted) else 0.0

        out: list[_Candidate] = []
        for index, passage in enumerate(near):
            if passage.answer:
                words = content_words(passage.text) | content_words(passage.answer)
                score = passage.score + QA_PRIOR + OVERLAP_WEIGHT * overlap(words)
                out.append(_Candidate(passage.answer, score + bonus(passage.answer), index, 0,
                                      whole=True, lexical=bool(asked & words),
                                      strong=passage.score >= strong))
                continue
            context, body = split_context(passage.text)
            context_words = content_words(context)
            for position, sentence in enumerate(split_sentences(body)):
                words = content_words(sentence) | context_words
                score = passage.score + OVERLAP_WEIGHT * overlap(words) + bonus(sentence)
                out.append(_Candidate(sentence, score, index, position,
                                      lexical=bool(asked & words),
                                      strong=passage.score >= strong,
                                      words=frozenset(content_words(sentence))))
        return out

    def reply(self, request: LLMRequest) -> str:
        """The full reply: the grounded answer, or the fallback; at most ``max_tokens`` words."""
        text = self.answer(request.question, request.passages) or request.fallback
        words = text.split()
        limit = min(request.max_tokens, self.config.max_tokens)
        return " ".join(words[:limit])

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """The reply in groups of a few words (leading space on all but the first)."""
        words = self.reply(request).split()
        for start in range(0, len(words), WORDS_PER_DELTA):
            piece = " ".join(words[start:start + WORDS_PER_DELTA])
            yield piece if start == 0 else " " + piece
            await asyncio.sleep(0)
