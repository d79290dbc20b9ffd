"""Streaming ASR: VAD framing, endpointing and speculative transcription for one session.

``feed`` runs inline and cheaply: validate, resample to 16 kHz, cut 512-sample (32 ms) frames,
ask the VAD about each, and advance the state machine below. Transcription is the only slow
step; it runs in a worker thread, one at a time per :class:`StreamingASR`, or, for a transcriber
with ``transcribe_async`` (the ASR deployment), as a cancellable call on the session's loop.

State machine, per utterance::

    idle --(min_speech_ms voiced)--> speech     emits SpeechStarted(start of the voiced run)
    speech --(speculative_after_ms silence)-->  transcribe the utterance so far, in the
                                                background (dropped if the user goes on)
    speech --(endpoint_silence_ms silence)--> idle   emits SpeechEnded(end of the last voiced
                                                frame), then Transcript(is_final=True) as soon
                                                as the (speculative) transcription is ready
    speech --(max_utterance_s)--> idle          cut: SpeechEnded + Transcript; speech that goes
                                                on starts a new utterance

Timestamps of SpeechStarted/SpeechEnded are on the media timeline of the chunks (``pts_ms`` of
the chunk plus the sample offset), not wall time; Transcript ``pts_ms`` is the session clock
when the text was ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from configs.schema import ASRConfig
from models.asr.base import (
    ASREvent,
    ASRSession,
    Transcriber,
    TranscriptResult,
    VoiceActivityDetector,
)
from models.audio import StreamResampler, resample, to_float32, validate_pcm
from models.clock import Clock
from models.errors import AvatarError, BackendError, InputError
from models.frames import AudioChunk, SpeechEnded, SpeechStarted, Transcript

log = logging.getLogger(__name__)

VAD_RATE_HZ = 16000
DEFAULT_RATES = (8000, 16000, 24000, 32000, 44100, 48000)
PRE_ROLL_MS = 200.0
MAX_PTS_MS = 1e15
"""Chunk timestamps beyond this (about 31,000 years) are refused as input errors."""
_CLOSED = object()


@dataclass(eq=False)
class _Job:
    """One transcription request; ``stale`` makes a queued job skip the work."""

    audio: np.ndarray
    stale: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Future[TranscriptResult | None] = field(init=False)


class StreamingASR:
    """Shared per process or replica: a transcriber, a VAD factory and the ASR config.

    Sessions share the transcriber, serialised by a lock (one transcription at a time);
    each session gets its own VAD from ``vad_factory``.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        vad_factory: Callable[[], VoiceActivityDetector],
        config: ASRConfig,
    ) -> None:
        self.transcriber = transcriber
        self.vad_factory = vad_factory
        self.config = config
        self._lock = threading.Lock()

    def open_session(
        self,
        clock: Clock,
        allowed_rates: Sequence[int] = DEFAULT_RATES,
        max_chunk_ms: float = 1000,
    ) -> StreamingASRSession:
        """Start a session; its timestamps come from the chunks and ``clock``. Call it on the
        event loop that will read the session's events."""
        bind = getattr(self.transcriber, "bind_loop", None)
        if bind is not None:  # a transcriber that must make its calls on this loop
            bind(asyncio.get_running_loop())
        return StreamingASRSession(self, clock, tuple(allowed_rates), max_chunk_ms)

    async def _transcribe_async(self, job: _Job) -> TranscriptResult | None:
        """A transcriber with ``transcribe_async`` (a remote deployment): cancelling the job's
        task cancels the call itself instead of leaving it queued behind the final one."""
        audio = job.audio
        if self.transcriber.sample_rate_hz != VAD_RATE_HZ:
            audio = resample(audio, VAD_RATE_HZ, self.transcriber.sample_rate_hz)
        result: TranscriptResult = await self.transcriber.transcribe_async(  # type: ignore[attr-defined]
            audio)
        return result

    def _transcribe_blocking(self, job: _Job) -> TranscriptResult | None:
        lock = contextlib.nullcontext() if self.transcriber.concurrent else self._lock
        with lock:
            if job.stale.is_set():
                return None
            audio = job.audio
            if self.transcriber.sample_rate_hz != VAD_RATE_HZ:
                audio = resample(audio, VAD_RATE_HZ, self.transcriber.sample_rate_hz)
            return self.transcriber.transcribe(audio)


class StreamingASRSession(ASRSession):
    """One user's audio stream (see the module docstring for the state machine)."""

    def __init__(
        self, owner: StreamingASR, clock: Clock, allowed_rates: tuple[int, ...],
        max_chunk_ms: float,
    ) -> None:
        self._owner = owner
        self._clock = clock
        self._allowed_rates = allowed_rates
        self._max_chunk_ms = max_chunk_ms
        vad_config = owner.config.vad
        self._vad = owner.vad_factory()
        self._vad.reset()
        self._frame = self._vad.frame_samples
        self._frame_ms = 1000.0 * self._frame / VAD_RATE_HZ
        self._threshold = vad_config.threshold
        self._min_speech_frames = max(1, math.ceil(vad_config.min_speech_ms / self._frame_ms))
        self._spec_frames = max(1, math.ceil(vad_config.speculative_after_ms / self._frame_ms))
        self._endpoint_frames = max(1, math.ceil(vad_config.endpoint_silence_ms / self._frame_ms))
        self._max_frames = max(1, int(vad_config.max_utterance_s * 1000 / self._frame_ms))
        self._preroll_frames = math.ceil(PRE_ROLL_MS / self._frame_ms)
        self._tail_frames = min(self._spec_frames, self._endpoint_frames)
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False
        # Audio framing: resampler, unframed 16 kHz samples and pts anchors.
        self._rate: int | None = None
        self._resampler: StreamResampler | None = None
        self._in_base = 0  # 16 kHz index where the current input rate began
        self._in_samples = 0  # input samples fed at the current rate
        self._anchors: deque[tuple[float, float]] = deque()  # (16 kHz index, pts_ms)
        self._pending = np.zeros(0, dtype=np.float32)
        self._pos = 0  # 16 kHz index of _pending[0]
        # Utterance state.
        self._recent: deque[np.ndarray] = deque(
            maxlen=self._preroll_frames + self._min_speech_frames
        )
        self._run = 0  # consecutive voiced frames while idle
        self._run_start_ms = 0.0
        self._speaking = False
        self._utterance: list[np.ndarray] = []
        self._voiced_frames = 0  # frames of _utterance up to the last voiced one
        self._voiced_end_ms = 0.0
        self._silence = 0
        self._spec: _Job | None = None
        self._finalizers: list[asyncio.Task[None]] = []
        self._last_final: asyncio.Task[None] | None = None

    # --- input ------------------------------------------------------------------------------

    def feed(self, chunk: AudioChunk) -> None:
        """Validate, resample and frame ``chunk``; advance the state machine. Never blocks.

        Raises :class:`InputError` for bad audio (the session is unaffected) or after
        :meth:`aclose`. Must be called from the event loop that reads :meth:`events`.
        """
        if self._closed:
            raise InputError("this ASR session is closed; open a new one")
        validate_pcm(chunk.pcm, chunk.sample_rate_hz, self._allowed_rates, self._max_chunk_ms)
        if not _usable_ms(chunk.pts_ms):
            raise InputError(f"chunk pts_ms must be a finite number of milliseconds within "
                             f"±{MAX_PTS_MS:.0e}, got {type(chunk.pts_ms).__name__} "
                             f"{str(chunk.pts_ms)[:40]}")
        if chunk.sample_rate_hz != self._rate:
            self._switch_rate(chunk.sample_rate_hz)
        assert self._resampler is not None
        offset = self._in_base + self._in_samples * VAD_RATE_HZ / chunk.sample_rate_hz
        self._anchors.append((offset, chunk.pts_ms))
        self._in_samples += len(chunk.pcm)
        self._append(self._resampler.push(to_float32(chunk.pcm)))

    def _switch_rate(self, rate: int) -> None:
        if self._resampler is not None:
            self._append(self._resampler.flush())
        self._rate = rate
        self._resampler = StreamResampler(rate, VAD_RATE_HZ)
        self._in_base = self._pos + len(self._pending)
        self._in_samples = 0

    def _append(self, audio: np.ndarray) -> None:
        if audio.size:
            self._pending = np.concatenate([self._pending, audio])
        while len(self._pending) >= self._frame:
            frame = self._pending[: self._frame]
            self._pending = self._pending[self._frame :]
            start_ms = self._pts_at(self._pos)
            self._pos += self._frame
            try:
                prob = self._vad.speech_probability(frame)
            except AvatarError:
                raise
            except Exception as exc:
                raise BackendError(f"voice activity detector failed: {exc}") from exc
            self._on_frame(frame, start_ms, prob >= self._threshold)

    def _pts_at(self, index: int) -> float:
        """Media time of a 16 kHz sample index, from the latest chunk that starts before it."""
        while len(self._anchors) > 1 and self._anchors[1][0] <= index:
            self._anchors.popleft()
        anchor_index, anchor_pts = self._anchors[0]
        return anchor_pts + 1000.0 * (index - anchor_index) / VAD_RATE_HZ

    # --- state machine ----------------------------------------------------------------------

    def _on_frame(self, frame: np.ndarray, start_ms: float, voiced: bool) -> None:
        end_ms = start_ms + self._frame_ms
        if not self._speaking:
            self._recent.append(frame)
            if not voiced:
                self._run = 0
                return
            if self._run == 0:
                self._run_start_ms = start_ms
            self._run += 1
            if self._run >= self._min_speech_frames:
                self._start_utterance(end_ms)
            return
        self._utterance.append(frame)
        if voiced:
            self._silence = 0
            self._voiced_frames = len(self._utterance)
            self._voiced_end_ms = end_ms
            self._drop_speculation()
        else:
            self._silence += 1
            if self._silence == self._spec_frames and self._silence < self._endpoint_frames:
                self._spec = self._submit(self._utterance_audio())
            if self._silence >= self._endpoint_frames:
                self._end_utterance(self._voiced_end_ms)
                return
        if len(self._utterance) >= self._max_frames:
            self._end_utterance(self._voiced_end_ms, cut=True)

    def _start_utterance(self, end_ms: float) -> None:
        keep = min(len(self._recent), self._run + self._preroll_frames)
        self._utterance = list(self._recent)[-keep:]
        self._recent.clear()
        self._speaking = True
        self._silence = 0
        self._voiced_frames = len(self._utterance)
        self._voiced_end_ms = end_ms
        self._run = 0
        self._queue.put_nowait(SpeechStarted(pts_ms=self._run_start_ms))

    def _end_utterance(self, speech_end_ms: float, *, cut: bool = False) -> None:
        self._queue.put_nowait(SpeechEnded(pts_ms=speech_end_ms))
        job = self._spec
        self._spec = None
        if job is None:
            job = self._submit(self._utterance_audio(whole=cut))
        previous = self._last_final
        task = asyncio.get_running_loop().create_task(
            self._finalize(job, speech_end_ms, previous)
        )
        self._last_final = task
        self._finalizers.append(task)
        task.add_done_callback(self._finalizers.remove)
        self._speaking = False
        self._utterance = []
        self._silence = 0
        self._run = 0

    def _utterance_audio(self, *, whole: bool = False) -> np.ndarray:
        """The utterance up to its last voiced frame plus a little trailing silence."""
        n = len(self._utterance) if whole else self._voiced_frames + self._tail_frames
        return np.concatenate(self._utterance[:n])

    def _drop_speculation(self) -> None:
        if self._spec is not None:
            self._spec.stale.set()
            self._spec.task.cancel()
            self._spec = None

    # --- transcription ----------------------------------------------------------------------

    def _submit(self, audio: np.ndarray) -> _Job:
        job = _Job(audio=audio)
        if hasattr(self._owner.transcriber, "transcribe_async"):
            job.task = asyncio.ensure_future(self._owner._transcribe_async(job))
        else:
            job.task = asyncio.ensure_future(
                asyncio.to_thread(self._owner._transcribe_blocking, job)
            )
        job.task.add_done_callback(_consume_exception)
        return job

    async def _finalize(
        self, job: _Job, speech_end_ms: float, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous})  # keep transcripts in utterance order
        try:
            result = await job.task
        except asyncio.CancelledError:
            job.stale.set()
            raise
        except AvatarError as exc:
            self._queue.put_nowait(exc)
            return
        except Exception as exc:
            self._queue.put_nowait(BackendError(f"transcription failed: {exc}"))
            return
        if result is None:  # cannot happen for a job that was never marked stale
            result = TranscriptResult("")
        self._queue.put_nowait(Transcript(
            text=result.text.strip(), is_final=True, pts_ms=self._clock.now_ms(),
            speech_end_ms=speech_end_ms, confidence=result.confidence,
        ))

    # --- output and shutdown ----------------------------------------------------------------

    async def events(self) -> AsyncIterator[ASREvent]:
        """Events in order until :meth:`aclose`.

        A failed transcription raises its :class:`BackendError` here; the session goes on and
        a new ``events()`` iteration continues after it.
        """
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                self._queue.put_nowait(_CLOSED)  # later iterations end too
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    async def aclose(self) -> None:
        """Stop: drop speculation, cancel pending transcriptions and end :meth:`events`."""
        if self._closed:
            return
        self._closed = True
        self._drop_speculation()
        tasks = list(self._finalizers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._queue.put_nowait(_CLOSED)


def _usable_ms(value: object) -> bool:
    """A timestamp the stream can compute with: a real number (not a bool) within
    ±:data:`MAX_PTS_MS`. Huge ints would overflow float conversion; NaN and inf poison every
    event time after them."""
    if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating):
        return False
    if isinstance(value, int | np.integer):
        return abs(int(value)) <= MAX_PTS_MS
    return math.isfinite(value) and abs(value) <= MAX_PTS_MS


def _consume_exception(task: asyncio.Future[object]) -> None:
    """Mark a discarded job's exception as retrieved (its finaliser reports real failures)."""
    if not task.cancelled():
        task.exception()
