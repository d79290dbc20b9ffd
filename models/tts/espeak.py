"""eSpeak NG through ctypes: the embedded default voice, first audio within milliseconds.

libespeak-ng (shipped by ``espeakng-loader``) runs in synchronous mode with a synth callback that
receives each audio buffer together with its events; phoneme events carry IPA names and the
exact sample they start at. The library is process-global and not reentrant, so it is
initialised once per process and one synthesis runs at a time (module lock).

Streaming: ``espeak_Synth`` runs in a short-lived helper thread that pushes buffers to a queue;
the generator turns them into chunks as soon as the phonemes they hold are complete, so the first
chunk arrives after the first phoneme is rendered rather than after the whole text.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Iterator
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    c_char,
    c_char_p,
    c_int,
    c_short,
    c_size_t,
    c_ubyte,
    c_uint,
    c_void_p,
)
from dataclasses import dataclass, field

import numpy as np

from configs.schema import TTSConfig
from models.errors import BackendError, BackendUnavailable, ConfigError
from models.frames import PhonemeTiming, TTSChunk
from models.tts.base import TTS
from models.tts.phonemes import clean_phoneme, merge_pauses, normalize_text, samples_to_ms

DEFAULT_VOICE = "en-us"

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_BUFFER_MS = 60


class _EventId(Union):
    _fields_ = (("number", c_int), ("name", c_void_p), ("string", c_char * 8))


class _Event(Structure):
    """``espeak_EVENT``: six 32-bit fields, a pointer and an 8-byte union (40 bytes on 64-bit)."""

    _fields_ = (
        ("type", c_int),
        ("unique_identifier", c_uint),
        ("text_position", c_int),
        ("length", c_int),
        ("audio_position", c_int),
        ("sample", c_int),
        ("user_data", c_void_p),
        ("id", _EventId),
    )


class _Voice(Structure):
    """``espeak_VOICE``, used to select a voice by language (``en-gb``)."""

    _fields_ = (
        ("name", c_char_p),
        ("languages", c_char_p),
        ("identifier", c_char_p),
        ("gender", c_ubyte),
        ("age", c_ubyte),
        ("variant", c_ubyte),
        ("xx1", c_ubyte),
        ("score", c_int),
        ("spare", c_void_p),
    )


_SynthCallback = CFUNCTYPE(c_int, POINTER(c_short), c_int, POINTER(_Event))


@dataclass
class _Job:
    """One synthesis: what the callback hands to the generator."""

    out: queue.SimpleQueue[tuple[np.ndarray, list[tuple[int, int, str]]] | BaseException | None]
    abort: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event | None = None

    def cancelled(self) -> bool:
        return self.abort.is_set() or (self.stop is not None and self.stop.is_set())


class _Engine:
    """The process-wide libespeak-ng handle. Use only while holding :attr:`lock`."""

    def __init__(self) -> None:
        try:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as exc:
            raise BackendUnavailable(
                f"libespeak-ng could not be loaded ({exc}); install espeakng-loader"
            ) from exc
        lib.espeak_Initialize.argtypes = (c_int, c_int, c_char_p, c_int)
        lib.espeak_Initialize.restype = c_int
        lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = (c_char_p,)
        lib.espeak_SetVoiceByName.restype = c_int
        lib.espeak_SetVoiceByProperties.argtypes = (POINTER(_Voice),)
        lib.espeak_SetVoiceByProperties.restype = c_int
        lib.espeak_SetParameter.argtypes = (c_int, c_int, c_int)
        lib.espeak_SetParameter.restype = c_int
        lib.espeak_Synth.argtypes = (
            c_char_p, c_size_t, c_uint, c_int, c_uint, c_uint, c_void_p, c_void_p
        )
        lib.espeak_Synth.restype = c_int
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path.encode(), options
        )
        if rate <= 0:
            raise BackendUnavailable(f"espeak_Initialize failed with data at {data_path}")
        self.lib = lib
        self.sample_rate_hz = rate
        self.lock = threading.Lock()
        self.voice: str | None = None
        self.job: _Job | None = None
        self._callback = _SynthCallback(self._on_audio)  # kept alive as long as the engine
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes._Pointer, num_samples: int, events: ctypes._Pointer) -> int:
        job = self.job
        if job is None or job.cancelled():
            return 1
        try:
            pcm = (
                np.ctypeslib.as_array(wav, shape=(num_samples,)).astype(np.int16)
                if wav and num_samples > 0
                else np.zeros(0, dtype=np.int16)
            )
            marks: list[tuple[int, int, str]] = []
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                event = events[i]
                if event.type == _EVENT_PHONEME:
                    raw = bytes(event.id.string).split(b"\0", 1)[0]
                    marks.append((event.type, event.sample, raw.decode("utf-8", "ignore")))
                elif event.type in (_EVENT_END, _EVENT_MSG_TERMINATED):
                    marks.append((event.type, event.sample, ""))
                i += 1
            job.out.put((pcm, marks))
        except BaseException as exc:  # never let an exception cross the C boundary
            job.out.put(exc)
            return 1
        return 0

    def set_voice(self, voice: str) -> None:
        """Select a voice by name or file (``en-us``, ``gmw/en-GB-x-rp``) or by language
        (``en-gb``, ``pt-br``)."""
        if voice == self.voice:
            return
        self.voice = None
        by_language = _Voice(None, voice.lower().encode(), None, 0, 0, 0, 0, 0, None)
        if (
            self.lib.espeak_SetVoiceByName(voice.encode()) != 0
            and self.lib.espeak_SetVoiceByProperties(ctypes.byref(by_language)) != 0
        ):
            raise ConfigError(
                f"models.tts.voice: espeak has no voice {voice!r}; use a language code such "
                "as en-us, en-gb, fr or de, or a voice file such as gmw/en-GB-x-rp"
            )
        self.voice = voice

    def run(self, job: _Job, text: str, voice: str, rate_wpm: int) -> None:
        """Synthesise ``text`` into ``job.out`` (blocking), then put ``None``."""
        try:
            with self.lock:
                self.set_voice(voice)
                self.lib.espeak_SetParameter(_RATE, rate_wpm, 0)
                data = text.encode("utf-8")
                self.job = job
                try:
                    status = self.lib.espeak_Synth(
                        data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                    )
                finally:
                    self.job = None
                if status != 0 and not job.cancelled():
                    raise BackendError(f"espeak_Synth failed with status {status}")
        except BaseException as exc:
            job.out.put(exc)
        finally:
            job.out.put(None)


_ENGINE: _Engine | None = None
_ENGINE_INIT = threading.Lock()


def _engine() -> _Engine:
    global _ENGINE
    with _ENGINE_INIT:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


class EspeakTTS(TTS):
    """eSpeak NG voice (``config.voice``, default en-us) at ``config.rate_wpm``."""

    name = "espeak"
    reentrant = False

    def __init__(self, config: TTSConfig) -> None:
        super().__init__()
        self.config = config
        self.voice = config.voice or DEFAULT_VOICE
        self.rate_wpm = config.rate_wpm
        engine = _engine()
        with engine.lock:
            engine.set_voice(self.voice)
        self.sample_rate_hz = engine.sample_rate_hz
        self._chunk_samples = max(1, self.sample_rate_hz * config.chunk_ms // 1000)

    def synthesize(self, text: str, stop: threading.Event | None = None) -> Iterator[TTSChunk]:
        """Stream ``text`` as chunks of at most ``config.chunk_ms`` with IPA phoneme timings."""
        text = normalize_text(text)
        engine = _engine()
        job = _Job(out=queue.SimpleQueue(), stop=stop)
        worker = threading.Thread(
            target=engine.run, args=(job, text, self.voice, self.rate_wpm),
            name="espeak-synth", daemon=True,
        )
        worker.start()
        try:
            yield from self._assemble(job, stop)
        finally:
            job.abort.set()
            worker.join()

    def _assemble(self, job: _Job, stop: threading.Event | None) -> Iterator[TTSChunk]:
        """Turn callback buffers into chunks. Audio is released only up to the start of the
        last phoneme seen, so every phoneme in a chunk has its final duration."""
        rate = self.sample_rate_hz
        marks = _PhonemeTracker(rate)
        pending = np.zeros(0, dtype=np.int16)  # received, not yet yielded
        emitted = 0  # samples yielded so far
        finished = False
        while not finished:
            pieces = [pending]
            item = job.out.get()
            while True:  # take everything already queued, so a slow consumer gets big chunks
                if item is None:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                pcm, events = item
                pieces.append(pcm)
                marks.feed(events, emitted + sum(len(p) for p in pieces))
                try:
                    item = job.out.get_nowait()
                except queue.Empty:
                    break
            pending = np.concatenate(pieces)
            if finished:
                marks.finish(emitted + len(pending))
            # the first chunk goes out at once; later ones wait for a full chunk (espeak runs
            # hundreds of times faster than real time, so waiting costs well under a ms)
            while True:
                if stop is not None and stop.is_set():
                    return
                wanted = 1 if emitted == 0 or finished else self._chunk_samples
                size = min(self._chunk_samples, marks.ready - emitted)
                if size < wanted or size <= 0:
                    break
                end_ms = samples_to_ms(emitted + size, rate)
                yield TTSChunk(
                    pending[:size], rate, samples_to_ms(emitted, rate), marks.take_before(end_ms)
                )
                pending = pending[size:]
                emitted += size


class _PhonemeTracker:
    """Phoneme events to timings: a phoneme ends where the next one (or the clause) starts."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.rate = sample_rate_hz
        self.ready = 0
        """Samples before which every phoneme has its final duration."""
        self._open: tuple[int, str] | None = None
        self._done: list[PhonemeTiming] = []

    def feed(self, events: list[tuple[int, int, str]], received: int) -> None:
        for kind, sample, ipa in events:
            self._close(sample)
            self._open = (sample, clean_phoneme(ipa)) if kind == _EVENT_PHONEME else None
            self.ready = max(self.ready, min(sample, received))

    def finish(self, total: int) -> None:
        self._close(total)
        self._open = None
        self.ready = total

    def take_before(self, end_ms: float) -> tuple[PhonemeTiming, ...]:
        done = merge_pauses(self._done)
        self._done = [p for p in done if p.start_ms >= end_ms]
        return tuple(p for p in done if p.start_ms < end_ms)

    def _close(self, end_sample: int) -> None:
        if self._open is not None:
            start, name = self._open
            self._done.append(PhonemeTiming(
                name, samples_to_ms(start, self.rate), samples_to_ms(end_sample - start, self.rate)
            ))
