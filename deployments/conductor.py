"""The per-session conductor: user speech or text in, the avatar's reply speech out.

::

    audio ─▶ ASR session ─▶ Transcript ─┐
    text  ──────────────────────────────┴▶ input rail ─▶ retrieval ─▶ LLM stream ─▶ output rail
        ─▶ clause chunker ─▶ TTS stream ─▶ SpeechAudio (+ phonemes) on the media clock ─▶ out

Everything the avatar says for a turn carries the turn's id. Barge-in (the user starts
talking while the avatar thinks or speaks) cancels the turn's task, which stops the LLM and
TTS streams where they are, drops queued output of that turn, and emits :class:`Interrupt`
ahead of anything else. Each turn records timing marks (:mod:`deployments.timing`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from configs.schema import ConversationConfig, KnowledgeBaseConfig, PersonaConfig
from deployments.chunker import ClauseChunker
from deployments.timing import TurnTimings
from models.asr.base import ASRSession
from models.clock import Clock
from models.errors import AvatarError, InputError
from models.frames import (
    AudioChunk,
    AvatarState,
    Clause,
    ErrorEvent,
    Interrupt,
    PhonemeTiming,
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
    StateChange,
    TextDelta,
    Transcript,
    TurnEnd,
)
from models.guardrails.base import Guardrails
from models.knowledge.base import KnowledgeStore
from models.knowledge.qdrant import MAX_QUERY_CHARS
from models.llm.base import LLM, ChatMessage, LLMRequest
from models.tts.base import TTS

OutputEvent = (
    SpeechAudio | TextDelta | Transcript | StateChange | Interrupt | TurnEnd | ErrorEvent | Clause
)


class OutputQueue:
    """Session output. Control messages overtake data: an :class:`Interrupt` removes every
    queued item of its turn and goes to the front."""

    def __init__(self) -> None:
        self._items: deque[OutputEvent] = deque()
        self._ready = asyncio.Event()
        self._interrupted: set[int] = set()

    def put(self, item: OutputEvent) -> None:
        if isinstance(item, Interrupt):
            self._interrupted.add(item.turn_id)
            kept = [i for i in self._items if not self._dropped(i)]
            self._items = deque([item, *kept])
        elif not self._dropped(item):
            self._items.append(item)
        self._ready.set()

    def _dropped(self, item: OutputEvent) -> bool:
        """Media of an interrupted turn never reaches the client."""
        return isinstance(item, SpeechAudio) and item.turn_id in self._interrupted

    async def get(self) -> OutputEvent:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> OutputEvent | None:
        return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


class Conductor:
    """One conversation. Construct with shared services, then ``await start()``."""

    def __init__(
        self,
        *,
        asr: ASRSession | None,
        llm: LLM,
        tts: TTS,
        store: KnowledgeStore,
        rails: Guardrails,
        persona: PersonaConfig,
        knowledge_base: KnowledgeBaseConfig,
        config: ConversationConfig,
        clock: Clock,
        top_k: int = 4,
        history: list[ChatMessage] | None = None,
    ) -> None:
        self.asr = asr
        self.llm = llm
        self.tts = tts
        self.store = store
        self.rails = rails
        self.persona = persona
        self.kb = knowledge_base
        self.config = config
        self.clock = clock
        self.top_k = top_k
        self.history: list[ChatMessage] = list(history or [])
        self.timings: list[TurnTimings] = []
        self.out = OutputQueue()
        self.state: AvatarState = "idle"
        self._turn_id = 0
        self._turn_task: asyncio.Task[None] | None = None
        self._asr_task: asyncio.Task[None] | None = None
        self._audio_end_ms = 0.0
        self._pending_speech: TurnTimings | None = None
        self._blocked_reply: str | None = None
        self._carry_text: str | None = None
        self._voice_turn: tuple[str, TurnTimings] | None = None
        self._merged_turns: set[int] = set()
        self._closed = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.asr is not None and self._asr_task is None:
            self._asr_task = asyncio.create_task(self._consume_asr(), name="conductor-asr")
        self._set_state("listening" if self.asr is not None else "idle")

    async def aclose(self) -> None:
        self._closed = True
        await self._cancel_turn()
        if self._asr_task is not None:
            self._asr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asr_task
        if self.asr is not None:
            await self.asr.aclose()

    async def events(self) -> AsyncIterator[OutputEvent]:
        while True:
            yield await self.out.get()

    # --- input ------------------------------------------------------------------------------

    def feed_audio(self, chunk: AudioChunk) -> None:
        """Microphone audio. Bad audio raises :class:`InputError`; the session goes on."""
        if self.asr is None:
            raise InputError("this session was opened without speech input; send text instead")
        self.asr.feed(chunk)

    async def send_text(self, text: str) -> int:
        """A typed user turn. Returns its turn id. Interrupts a reply in progress."""
        text = self._validate_text(text)
        await self._barge_in(self.clock.now_ms())
        timings = self._new_turn("text")
        timings.mark("asr_final", self.clock.now_ms())
        self._start_turn(text, timings)
        return timings.turn_id

    async def interrupt(self) -> None:
        await self._barge_in(self.clock.now_ms())

    async def wait_idle(self) -> None:
        """Until the current turn (if any) has finished."""
        if self._turn_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._turn_task

    def _validate_text(self, text: str | bytes) -> str:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"text is not valid UTF-8 (bad byte at {exc.start}); send UTF-8 text"
                ) from None
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        if len(text) > self.config.max_text_chars:
            raise InputError(f"text is {len(text)} characters; the limit is "
                             f"{self.config.max_text_chars} (conversation.max_text_chars)")
        cleaned = "".join(ch for ch in text if ch.isprintable() or ch in "\n\t").strip()
        if not cleaned:
            raise InputError("text is empty; type a question")
        if len(cleaned) > MAX_QUERY_CHARS:  # else the turn's retrieval fails with no reply
            raise InputError(f"text is {len(cleaned)} characters; a question may have at most "
                             f"{MAX_QUERY_CHARS} (the knowledge base searches no longer ones)")
        return cleaned

    # --- ASR events -------------------------------------------------------------------------

    async def _consume_asr(self) -> None:
        assert self.asr is not None
        while True:
            try:
                async for event in self.asr.events():
                    await self._on_asr_event(event)
                return
            except AvatarError as exc:  # a failed transcription loses one utterance, no more
                self.out.put(ErrorEvent(exc.message, self.clock.now_ms()))

    async def _on_asr_event(self, event: SpeechStarted | SpeechEnded | Transcript) -> None:
        if isinstance(event, SpeechStarted):
            self._carry_text = self._continued_turn_text(event.pts_ms)
            await self._barge_in(event.pts_ms)
            self._pending_speech = self._new_turn("voice")
            self._pending_speech.mark("speech_start", event.pts_ms)
            self._set_state("listening")
        elif isinstance(event, SpeechEnded):
            timings = self._pending_speech or self._new_turn("voice")
            timings.mark("speech_end", event.pts_ms)
            timings.mark("endpoint", self.clock.now_ms())
            self._pending_speech = timings
        elif isinstance(event, Transcript) and event.is_final:
            timings, self._pending_speech = self._pending_speech, None
            self.out.put(event)
            carry, self._carry_text = self._carry_text, None
            text = " ".join(t for t in (carry, event.text.strip()) if t)
            if not text:
                if timings is not None:
                    self.timings.remove(timings)
                return
            timings = timings or self._new_turn("voice")
            if event.speech_end_ms is not None:
                timings.mark("speech_end", event.speech_end_ms)
            timings.mark("asr_final", self.clock.now_ms())
            self._start_turn(text, timings)
        else:
            self.out.put(event)

    def _continued_turn_text(self, speech_start_ms: float) -> str | None:
        """The user paused mid-sentence ("Hi, <pause> what time do you open?"): the endpoint
        fired and a reply began, but they go on talking before the avatar said much. Their
        words so far are carried into the next turn instead of being answered alone."""
        turn = self._voice_turn
        if turn is None or self._turn_task is None:
            return None
        text, timings = turn
        speech_end = timings.marks.get("speech_end")
        if speech_end is None:
            return None
        if speech_start_ms - speech_end > self.config.continuation_window_ms:
            return None
        first_audio = timings.marks.get("tts_first_audio")
        if first_audio is not None and \
                self.clock.now_ms() - first_audio > self.config.continuation_max_spoken_ms:
            return None
        self._merged_turns.add(timings.turn_id)
        return text

    # --- turns ------------------------------------------------------------------------------

    def _new_turn(self, source: str) -> TurnTimings:
        self._turn_id += 1
        timings = TurnTimings(self._turn_id, source)
        self.timings.append(timings)
        return timings

    def _start_turn(self, text: str, timings: TurnTimings) -> None:
        if timings.source == "text":
            self.out.put(Transcript(text, True, self.clock.now_ms()))
        self._voice_turn = (text, timings) if timings.source == "voice" else None
        self._turn_task = asyncio.create_task(self._run_turn(text, timings),
                                              name=f"turn-{timings.turn_id}")

    async def _barge_in(self, pts_ms: float) -> None:
        """Stop the avatar: the turn still being generated, or audio still playing out."""
        task = self._turn_task
        generating = task is not None and not task.done()
        playing = self._audio_end_ms > self.clock.now_ms()
        if not (generating or playing):
            return
        self.out.put(Interrupt(self.clock.now_ms(), self._turn_id))
        await self._cancel_turn()
        self._audio_end_ms = self.clock.now_ms()
        self._set_state("listening")

    async def _cancel_turn(self) -> None:
        task, self._turn_task = self._turn_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _set_state(self, state: AvatarState) -> None:
        if state != self.state:
            self.state = state
            self.out.put(StateChange(state, self.clock.now_ms()))

    async def _run_turn(self, text: str, t: TurnTimings) -> None:
        spoken: list[str] = []
        refused = False
        interrupted = False
        try:
            self._set_state("thinking")
            verdict = self.rails.check_input(text)
            t.mark("input_rail_done", self.clock.now_ms())
            if not verdict.allowed:
                refused = True
                await self._speak_clauses(self._single(verdict.reply or
                                                       self.persona.guardrails.refusal), t, spoken)
            else:
                await self._speak_clauses(self._reply_clauses(verdict.text, t), t, spoken)
        except asyncio.CancelledError:
            interrupted = True
            raise
        except AvatarError as exc:
            self.out.put(ErrorEvent(exc.message, self.clock.now_ms()))
            with contextlib.suppress(AvatarError):
                await self._speak_clauses(self._single(self.persona.apology), t, spoken)
        finally:
            t.mark("turn_end", self.clock.now_ms())
            reply = " ".join(spoken)
            if t.turn_id not in self._merged_turns:  # a continued turn is asked again, whole
                self.history.append(ChatMessage("user", text))
                if reply:
                    self.history.append(ChatMessage("assistant", reply))
            keep = 2 * self.config.history_turns
            if len(self.history) > keep:
                del self.history[: len(self.history) - keep]
            self.out.put(TurnEnd(self.clock.now_ms(), t.turn_id, reply, refused, interrupted,
                                 dict(t.marks), text, t.turn_id in self._merged_turns))
            if not interrupted:
                self._set_state("listening" if self.asr is not None else "idle")

    async def _single(self, text: str) -> AsyncIterator[str]:
        yield text

    async def _reply_clauses(self, text: str, t: TurnTimings) -> AsyncIterator[str]:
        asearch = getattr(self.store, "asearch", None)  # a remote store awaits, no thread
        if asearch is not None:
            passages = await asearch(self.kb.tenant, self.kb.name, text, self.top_k)
        else:
            passages = await asyncio.to_thread(
                self.store.search, self.kb.tenant, self.kb.name, text, self.top_k
            )
        t.mark("retrieval_done", self.clock.now_ms())
        keep = 2 * self.config.history_turns
        history = self.history[-keep:] if keep else []
        messages = (ChatMessage("system", self.persona.system_prompt), *history,
                    ChatMessage("user", text))
        request = LLMRequest(messages, text, tuple(passages), self.persona.fallback)
        chunker = ClauseChunker(self.config.first_clause_min_chars, self.config.clause_max_chars)
        so_far = ""
        async for delta in self.llm.stream(request):
            t.mark("llm_first_token", self.clock.now_ms())
            self.out.put(TextDelta(delta, self.clock.now_ms()))
            for clause in chunker.push(delta):
                so_far, allowed = self._check_output(so_far, clause, text)
                if allowed is None:
                    return
                yield allowed
        t.mark("llm_done", self.clock.now_ms())
        for clause in chunker.flush():
            so_far, allowed = self._check_output(so_far, clause, text)
            if allowed is None:
                return
            yield allowed

    def _check_output(self, so_far: str, clause: str, user_text: str) -> tuple[str, str | None]:
        """Output rail on the reply so far; a blocked reply ends with the refusal."""
        candidate = f"{so_far} {clause}".strip()
        verdict = self.rails.check_output(candidate, user_text)
        if not verdict.allowed:
            self._blocked_reply = verdict.reply or self.persona.guardrails.refusal
            return so_far, None
        safe = verdict.text[len(so_far):].strip() if verdict.text.startswith(so_far) else clause
        return candidate, safe

    async def _speak_clauses(self, clauses: AsyncIterator[str], t: TurnTimings,
                             spoken: list[str]) -> None:
        """TTS runs concurrently with the LLM: clauses are queued as they come."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._blocked_reply = None

        async def produce() -> None:
            try:
                async for clause in clauses:
                    await queue.put(clause)
                if self._blocked_reply:
                    await queue.put(self._blocked_reply)
            finally:
                await queue.put(None)

        producer = asyncio.create_task(produce())
        index = 0
        try:
            while (clause := await queue.get()) is not None:
                if index == 0:
                    t.mark("first_clause", self.clock.now_ms())
                self.out.put(Clause(clause, index, self.clock.now_ms()))
                await self._speak(clause, index, t)
                spoken.append(clause)
                index += 1
            await producer
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    async def _speak(self, text: str, clause_index: int, t: TurnTimings) -> None:
        base_ms: float | None = None
        async for chunk in self.tts.stream(text):
            now = self.clock.now_ms()
            if base_ms is None:
                # the clause starts where the previous audio ends, or now if that has passed
                base_ms = max(now, self._audio_end_ms)
                t.mark("tts_first_audio", now)
                self._set_state("speaking")
            pts = base_ms + chunk.offset_ms
            phonemes = tuple(PhonemeTiming(p.phoneme, base_ms + p.start_ms, p.duration_ms)
                             for p in chunk.phonemes)
            self.out.put(SpeechAudio(chunk.pcm, chunk.sample_rate_hz, pts, t.turn_id,
                                     clause_index, phonemes))
            self._audio_end_ms = pts + chunk.duration_ms
