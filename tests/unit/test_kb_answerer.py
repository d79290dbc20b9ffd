"""The retrieval-grounded answerer: answers only from the passages, falls back below the
threshold, streams promptly, and answers the default persona's questions correctly."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from configs.loader import knowledge_dir, load_config, load_persona, persona_dir
from configs.schema import LLMConfig
from models.frames import Passage
from models.llm.base import ChatMessage, LLMRequest
from models.llm.kb import KnowledgeAnswerer, split_sentences

pytestmark = pytest.mark.unit

FALLBACK = "Sorry, I don't know that one."


def passage(text: str, score: float, answer: str | None = None, source: str = "t.md") -> Passage:
    return Passage(text=text, score=score, source=source, kb="kb", tenant="t", answer=answer)


def request(question: str, *passages: Passage, max_tokens: int = 160) -> LLMRequest:
    return LLMRequest(messages=(ChatMessage("user", question),), question=question,
                      passages=passages, fallback=FALLBACK, max_tokens=max_tokens)


@pytest.fixture()
def answerer() -> KnowledgeAnswerer:
    return KnowledgeAnswerer(LLMConfig(min_answer_score=0.4))


async def test_a_matching_qa_entry_is_answered_with_its_curated_answer(
    answerer: KnowledgeAnswerer,
) -> None:
    reply = await answerer.complete(request(
        "when do you open on saturdays",
        passage("What are your weekend hours?", 0.82, answer="Saturday from 9 a.m. to 1 p.m."),
        passage("Hours\nWe open at 7:30 a.m. on weekdays.", 0.61),
    ))
    assert reply == "Saturday from 9 a.m. to 1 p.m."


async def test_below_the_threshold_it_says_the_fallback(answerer: KnowledgeAnswerer) -> None:
    reply = await answerer.complete(request(
        "what's the capital of France",
        passage("What are your weekend hours?", 0.21, answer="Saturday from 9 to 1."),
    ))
    assert reply == FALLBACK
    assert await answerer.complete(request("anything at all")) == FALLBACK


async def test_an_answer_must_share_a_word_with_the_question(answerer: KnowledgeAnswerer) -> None:
    # Close enough on meaning to pass the threshold, but about something else entirely.
    reply = await answerer.complete(request(
        "what time is it in Tokyo",
        passage("What are your opening hours?", 0.5, answer="We open at 7:30 a.m."),
    ))
    assert reply == FALLBACK


async def test_extracts_the_sentence_that_answers_without_the_heading(
    answerer: KnowledgeAnswerer,
) -> None:
    billing = ("Billing - Self-pay prices\nA follow-up visit costs 120 dollars. The billing office "
               "is on the second floor. A flu shot costs 40 dollars for self-pay patients.")
    reply = await answerer.complete(request(
        "how much is a flu shot if I pay myself", passage(billing, 0.66),
        passage("Vaccinations\nFlu shots are given from September.", 0.5),
    ))
    assert "40 dollars" in reply
    assert "second floor" not in reply
    assert "Self-pay prices" not in reply and "Billing -" not in reply


def test_sentences_keep_abbreviations_together() -> None:
    text = "Dr. Raman sees children. We open at 9 a.m. on Saturday. We close at 7 p.m. Call us."
    assert split_sentences(text) == [
        "Dr. Raman sees children.", "We open at 9 a.m. on Saturday.", "We close at 7 p.m.",
        "Call us.",
    ]


async def test_stream_yields_word_groups_that_join_to_the_reply(
    answerer: KnowledgeAnswerer,
) -> None:
    req = request("parking", passage("Parking\nParking is free in the lot behind the building, "
                                     "with its entrance on Cedar Street.", 0.7))
    deltas = [d async for d in answerer.stream(req)]
    assert len(deltas) > 3
    assert "".join(deltas) == answerer.reply(req)
    assert all(0 < len(d.split()) <= 3 for d in deltas)


async def test_stream_stops_when_the_consumer_stops(answerer: KnowledgeAnswerer) -> None:
    req = request("parking", passage("Parking\n" + "Parking is free. " * 40, 0.9))
    stream = answerer.stream(req)
    first = await anext(stream)
    await stream.aclose()
    assert first
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_replies_respect_max_tokens(answerer: KnowledgeAnswerer) -> None:
    req = request("hours", passage("Hours?", 0.9, answer="We open at nine and close at five."),
                  max_tokens=3)
    assert await answerer.complete(req) == "We open at"


# --- the default persona, end to end through the real embedder and store ------------------


class PersonaKB:
    def __init__(self, tmp: Path) -> None:
        from models.knowledge.ingest import ensure_ingested
        from models.knowledge.minilm import MiniLMEmbedder
        from models.knowledge.qdrant import QdrantKnowledgeStore

        self.config = load_config("local", env={})
        self.persona = load_persona(self.config.persona)
        knowledge = self.config.models.knowledge.model_copy(update={"qdrant_path": str(tmp)})
        self.store = QdrantKnowledgeStore(knowledge, MiniLMEmbedder())
        ensure_ingested(self.store, self.config, self.persona.knowledge_base)
        self.answerer = KnowledgeAnswerer(self.config.models.llm)
        self.top_k = knowledge.top_k

    def ask(self, question: str) -> tuple[str, float, float]:
        """The reply, and the ms spent on embed + search and on answering."""
        start = time.perf_counter()
        passages = self.store.search(self.persona.tenant, self.persona.knowledge_base, question,
                                     self.top_k)
        searched = time.perf_counter()
        req = LLMRequest(messages=(), question=question, passages=tuple(passages),
                         fallback=self.persona.fallback)
        reply = self.answerer.reply(req)
        done = time.perf_counter()
        return reply, 1000 * (searched - start), 1000 * (done - searched)


@pytest.fixture(scope="module")
def persona_kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PersonaKB]:
    kb = PersonaKB(tmp_path_factory.mktemp("qdrant"))
    yield kb
    kb.store.close()


OFF_TOPIC = [
    "What's the capital of France?", "Tell me a joke.", "Who won the Super Bowl last year?",
    "Can you write me a poem about the ocean?", "What's the weather like tomorrow?",
    "How do I bake sourdough bread?", "What time is it in Tokyo right now?",
    "Recommend a good movie to watch tonight.", "What stocks should I buy?",
    "Can you book me a flight to Paris?", "Do you have a cafeteria?",
    "How do I get to the airport?", "Who is the president of the United States?",
]


@pytest.mark.slow
def test_answerable_questions_are_answered_with_the_expected_facts(
    persona_kb: PersonaKB, capsys: pytest.CaptureFixture[str]
) -> None:
    items = yaml.safe_load((persona_dir("maple-clinic") / "eval" / "answerable.yaml").read_text())
    assert len(items) >= 30
    misses, search_ms, answer_ms = [], [], []
    for item in items:
        reply, searched, answered = persona_kb.ask(item["q"])
        search_ms.append(searched)
        answer_ms.append(answered)
        if not all(fact.lower() in reply.lower() for fact in item["expect"]):
            misses.append(f"{item['q']!r} -> {reply!r} (expected {item['expect']})")
    rate = 1 - len(misses) / len(items)
    with capsys.disabled():
        print(f"\nkb answerer: grounded {rate:.0%} of {len(items)}; embed+search p50 "
              f"{statistics.median(search_ms):.1f} ms, answer p50 "
              f"{statistics.median(answer_ms):.2f} ms")
    assert rate >= 0.9, "\n".join(misses)


@pytest.mark.slow
@pytest.mark.parametrize("question", OFF_TOPIC)
def test_off_topic_questions_get_the_fallback(persona_kb: PersonaKB, question: str) -> None:
    reply, _, _ = persona_kb.ask(question)
    assert reply == persona_kb.persona.fallback


@pytest.mark.slow
def test_emergencies_always_point_to_911(persona_kb: PersonaKB) -> None:
    for question in ("This is an emergency, what do I do?",
                     "My dad has chest pain and can't breathe, what should we do?"):
        reply, _, _ = persona_kb.ask(question)
        assert "911" in reply, reply


def test_persona_points_at_its_configured_knowledge_base() -> None:
    config = load_config("local", env={})
    persona = load_persona("maple-clinic")
    assert (persona.name, persona.tenant, persona.knowledge_base) == (
        "maple-clinic", "maple", "maple-clinic")
    assert knowledge_dir(config, persona.knowledge_base).is_dir()
    assert "(555) 0142-3000" in persona.fallback
