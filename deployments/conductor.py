"""The per-session conductor: user speech or text in, the avatar's reply speech out.

::

    audio ─▶ ASR session ─▶ Transcript ─┐
    text  ──────────────────────────────┴▶ input rail ─▶ retrieval ─▶ LLM stream ─▶ output rail
        ─▶ clause chunker ─▶ TTS stream ─▶ SpeechAudio (+ phonemes) on the media clock ─▶ out

Everything the avatar says for a turn carries the turn's id. Barge-in (the user starts
talking while the avatar thinks or speaks) cancels the turn's task, which stops the LLM and
TTS streams where they are, drops queued output of that turn, and emits :class:`Interrupt`
ahead of anything else. Each turn records timing marks (:mod:`deployments.timing`).

A turn never ends in silence: when a stage fails for good (the adapters in
:mod:`deployments.remote` already retried a dead replica once), the user gets an
:class:`ErrorEvent` saying what went wrong and hears the persona's apology, from a clip kept by
:mod:`deployments.apology` when the TTS itself failed, or reads it when no clip exists. The
turn, apology included, is committed to the history so the conversation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator

from configs.schema import ConversationConfig, KnowledgeBaseConfig, PersonaConfig
from deployments.apology import APOLOGY_CLIPS, ApologyClips, Stage, StageFailed, clip, staged
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
    TTSChunk,
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
APOLOGY_CLIP_WAIT_S = 1.5
"""When the TTS fails while the apology clip is still being synthesised, wait this long."""
log = logging.getLogger(__name__)


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
        apology_clips: ApologyClips | None = None,
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
        self.apology_clips = apology_clips or APOLOGY_CLIPS
        self.stage_failures: Counter[Stage] = Counter()
        """Turns that ended in the apology, by the stage that failed (for metrics)."""
        self._apology_task: asyncio.Task[object] | None = None
        self._clause_index = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.asr is not None and self._asr_task is None:
            self._asr_task = asyncio.create_task(self._consume_asr(), name="conductor-asr")
        if self.tts.reentrant:  # a non-reentrant engine is prepared after the first turn
            self._prepare_apology()
        self._set_state("listening" if self.asr is not None else "idle")

    def _prepare_apology(self) -> None:
        """Synthesise the apology clip in the background unless it exists or is on its way."""
        running = self._apology_task is not None and not self._apology_task.done()
        if self._closed or running or \
                self.apology_clips.get(self.tts, self.persona.apology) is not None:
            return
        self._apology_task = asyncio.create_task(
            self.apology_clips.ensure(self.tts, self.persona.apology), name="apology-clip")

    async def aclose(self) -> None:
        self._closed = True
        await self._cancel_turn()
        if self._apology_task is not None:
            self._apology_task.cancel()  # the shared synthesis itself goes on
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
                self._asr_failed(exc)

    def _asr_failed(self, exc: AvatarError) -> None:
        """The utterance could not be transcribed: ask the user to say it again (unless a
        typed turn is already being answered)."""
        timings, self._pending_speech = self._pending_speech, None
        self._carry_text = None
        if self._turn_task is not None and not self._turn_task.done():
            self._report_failure("asr", exc, timings.turn_id if timings else self._turn_id)
            return
        timings = timings or self._new_turn("voice")
        self._voice_turn = None
        self._turn_task = asyncio.create_task(
            self._run_turn("", timings, StageFailed("asr", exc)),
            name=f"turn-{timings.turn_id}")

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

    async def _run_turn(self, text: str, t: TurnTimings,
                        failed: StageFailed | None = None) -> None:
        """Answer ``text``; a turn started with ``failed`` (the transcription failed) only
        apologises. Whatever fails, the turn ends with the apology and is committed."""
        spoken: list[str] = []
        refused = False
        interrupted = False
        self._clause_index = 0
        try:
            try:
                if failed is not None:
                    raise failed
                self._set_state("thinking")
                verdict = self.rails.check_input(text)
                t.mark("input_rail_done", self.clock.now_ms())
                if not verdict.allowed:
                    refused = True
                    await self._speak_clauses(self._single(
                        verdict.reply or self.persona.guardrails.refusal), t, spoken)
                else:
                    await self._speak_clauses(self._reply_clauses(verdict.text, t), t, spoken)
            except StageFailed as exc:
                self._report_failure(exc.stage, exc.error, t.turn_id)
                await self._apologize(t, spoken, tts_failed=exc.stage == "tts")
            except AvatarError as exc:  # e.g. the rails could not check this input
                self._report_failure(None, exc, t.turn_id)
                await self._apologize(t, spoken, tts_failed=False)
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            t.mark("turn_end", self.clock.now_ms())
            reply = " ".join(spoken)
            if text and t.turn_id not in self._merged_turns:  # a continued turn is asked
                self.history.append(ChatMessage("user", text))  # again, whole
                if reply:
                    self.history.append(ChatMessage("assistant", reply))
            keep = 2 * self.config.history_turns
            if len(self.history) > keep:
                del self.history[: len(self.history) - keep]
            self.out.put(TurnEnd(self.clock.now_ms(), t.turn_id, reply, refused, interrupted,
                                 dict(t.marks), text, t.turn_id in self._merged_turns))
            if not interrupted:
                self._set_state("listening" if self.asr is not None else "idle")
                self._prepare_apology()

    def _report_failure(self, stage: Stage | None, exc: AvatarError, turn_id: int) -> None:
        """Tell the user what went wrong; count and log a backend stage's failure."""
        self.out.put(ErrorEvent(exc.message, self.clock.now_ms()))
        if isinstance(exc, InputError):
            log.info("turn %d: input refused (%s): %s", turn_id, stage or "turn", exc.message)
            return
        self.stage_failures[stage or "turn"] += 1
        log.warning("turn %d: the %s stage failed, apologising: %s: %s", turn_id,
                    stage or "turn", type(exc).__name__, exc.message)

    async def _apologize(self, t: TurnTimings, spoken: list[str], *, tts_failed: bool) -> None:
        """End the turn with the persona's apology: the kept clip, else freshly synthesised
        (unless the TTS is what failed), else as text. Never raises a project error."""
        text = self.persona.apology
        if tts_failed:
            chunks = await self.apology_clips.wait_pending(self.tts, text, APOLOGY_CLIP_WAIT_S)
        else:
            chunks = await self.apology_clips.ensure(self.tts, text)
        index = self._clause_index
        self._clause_index += 1
        self.out.put(Clause(text, index, self.clock.now_ms()))
        if chunks:
            await self._play(clip(chunks), index, t)
        else:  # no audio at all: the user reads it
            log.warning("turn %d: no apology audio; sending it as text", t.turn_id)
            self.out.put(TextDelta(text, self.clock.now_ms()))
        spoken.append(text)

    async def _single(self, text: str) -> AsyncIterator[str]:
        yield text

    async def _reply_clauses(self, text: str, t: TurnTimings) -> AsyncIterator[str]:
        asearch = getattr(self.store, "asearch", None)  # a remote store awaits, no thread
        try:
            if asearch is not None:
                passages = await asearch(self.kb.tenant, self.kb.name, text, self.top_k)
            else:
                passages = await asyncio.to_thread(
                    self.store.search, self.kb.tenant, self.kb.name, text, self.top_k
                )
        except AvatarError as exc:
            raise StageFailed("knowledge", exc) from exc
        t.mark("retrieval_done", self.clock.now_ms())
        keep = 2 * self.config.history_turns
        history = self.history[-keep:] if keep else []
        messages = (ChatMessage("system", self.persona.system_prompt), *history,
                    ChatMessage("user", text))
        request = LLMRequest(messages, text, tuple(passages), self.persona.fallback)
        chunker = ClauseChunker(self.config.first_clause_min_chars, self.config.clause_max_chars)
        so_far = ""
        async for delta in staged("llm", self.llm.stream(request)):
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
        try:
            while (clause := await queue.get()) is not None:
                index = self._clause_index
                if index == 0:
                    t.mark("first_clause", self.clock.now_ms())
                self._clause_index += 1
                self.out.put(Clause(clause, index, self.clock.now_ms()))
                await self._speak(clause, index, t)
                spoken.append(clause)
            await producer
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    async def _speak(self, text: str, clause_index: int, t: TurnTimings) -> None:
        await self._play(staged("tts", self.tts.stream(text)), clause_index, t)

    async def _play(self, chunks: AsyncIterator[TTSChunk], clause_index: int,
                    t: TurnTimings) -> None:
        """Lay ``chunks`` out on the media clock after the audio already queued."""
        base_ms: float | None = None
        async for chunk in chunks:
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
