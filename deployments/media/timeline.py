"""The avatar's reply audio laid out on the session's media clock, read back frame by frame.

Text-to-speech runs ahead of real time, so reply audio arrives early, stamped with the media
time at which it must play (``SpeechAudio.pts_ms``). :class:`AudioTimeline` keeps each piece at
exactly that place (lip-sync and the face's phonemes rely on the same timestamps), mixes pieces
that overlap, cuts an interrupted turn's future away, and hands out fixed-size frames for the
outgoing audio track. It is pure and synchronous: the caller says which media time it wants.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections import deque
from dataclasses import dataclass

import numpy as np

from models.audio import resample
from models.errors import ConfigError, InputError
from models.frames import SpeechAudio

MIN_INPUT_RATE_HZ = 8000
MAX_INPUT_RATE_HZ = 192000
MAX_REMEMBERED_CUTS = 16
"""How many interrupts are remembered to trim audio of an interrupted turn that arrives late."""


@dataclass(slots=True)
class _Segment:
    start: int
    """Position of the first sample on the output timeline (samples since media time 0)."""
    pcm: np.ndarray
    turn_id: int

    @property
    def end(self) -> int:
        return self.start + len(self.pcm)


class AudioTimeline:
    """A schedule of the avatar's reply audio on the media clock, at one output sample rate.

    Sample ``n`` of the timeline plays at media time ``n * 1000 / sample_rate_hz`` ms. Audio is
    placed where its ``pts_ms`` says, even if that moment has passed: what remains of it plays,
    so it stays in sync with the face. Segments that ended before the last requested frame are
    forgotten, so memory stays bounded over a long session.
    """

    def __init__(self, sample_rate_hz: int = 48000, frame_ms: int = 20) -> None:
        if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int) or not (
            MIN_INPUT_RATE_HZ <= sample_rate_hz <= MAX_INPUT_RATE_HZ
        ):
            raise ConfigError(
                f"timeline sample rate must be an integer from {MIN_INPUT_RATE_HZ} to "
                f"{MAX_INPUT_RATE_HZ} Hz, got {sample_rate_hz!r}"
            )
        if isinstance(frame_ms, bool) or not isinstance(frame_ms, int) or frame_ms <= 0 or (
            sample_rate_hz * frame_ms % 1000
        ):
            raise ConfigError(
                f"frame_ms must be a positive whole number of ms that holds a whole number of "
                f"samples at {sample_rate_hz} Hz (e.g. 10 or 20), got {frame_ms!r}"
            )
        self.sample_rate_hz = sample_rate_hz
        self.frame_ms = frame_ms
        self.samples_per_frame = sample_rate_hz * frame_ms // 1000
        self._segments: list[_Segment] = []  # sorted by start
        self._played_until = -(2**62)  # segments ending at or before this are forgotten
        self._played_end: int | None = None
        self._cuts: deque[tuple[int, int]] = deque(maxlen=MAX_REMEMBERED_CUTS)

    # -- positions ---------------------------------------------------------------------------

    def _sample_at(self, ms: float) -> int:
        """Index of the sample that plays at media time ``ms`` (nearest)."""
        return round(ms * self.sample_rate_hz / 1000.0)

    def _first_sample_at_or_after(self, ms: float) -> int:
        exact = ms * self.sample_rate_hz / 1000.0
        nearest = round(exact)
        return nearest if abs(exact - nearest) < 1e-6 else math.ceil(exact)

    def _ms(self, sample: int) -> float:
        return 1000.0 * sample / self.sample_rate_hz

    # -- scheduling --------------------------------------------------------------------------

    def add(self, audio: SpeechAudio) -> None:
        """Schedule ``audio`` at its ``pts_ms``, resampled to the timeline's rate.

        Raises :class:`InputError` for anything but int16 mono PCM at a sane rate with a finite
        timestamp. Audio of a turn already interrupted is cut at the interrupt, as if it had
        been scheduled before it.
        """
        pcm = self._validate(audio)
        if pcm.size == 0:
            return
        pcm = resample(pcm, int(audio.sample_rate_hz), self.sample_rate_hz)
        start = self._sample_at(float(audio.pts_ms))
        cut = self._cut_for(audio.turn_id)
        if cut is not None:
            pcm = pcm[: max(0, cut - start)]
        segment = _Segment(start, pcm, audio.turn_id)
        if segment.pcm.size == 0 or segment.end <= self._played_until:
            return
        bisect.insort(self._segments, segment, key=lambda s: s.start)

    def interrupt(self, turn_id: int, at_ms: float) -> None:
        """Drop every sample at or after ``at_ms`` of turn ``turn_id`` and of earlier turns.

        Later turns and what was scheduled before ``at_ms`` stay. Audio of those turns that is
        added afterwards is cut at the same moment.
        """
        if not math.isfinite(at_ms):
            raise InputError(f"interrupt time must be a finite number of ms, got {at_ms!r}")
        cut = self._first_sample_at_or_after(at_ms)
        kept: list[_Segment] = []
        for seg in self._segments:
            if seg.turn_id <= turn_id and seg.end > cut:
                if seg.start >= cut:
                    continue
                seg.pcm = seg.pcm[: cut - seg.start]
            kept.append(seg)
        self._segments = kept
        self._cuts.append((turn_id, cut))

    def _cut_for(self, turn_id: int) -> int | None:
        cuts = [cut for cut_turn, cut in self._cuts if cut_turn >= turn_id]
        return min(cuts) if cuts else None

    # -- reading -----------------------------------------------------------------------------

    def frame(self, start_ms: float) -> np.ndarray:
        """The int16 samples covering ``[start_ms, start_ms + frame_ms)``: mixed audio or zeros.

        Overlapping segments are summed and saturated to the int16 range. Segments that ended
        before ``start_ms`` are forgotten.
        """
        if not math.isfinite(start_ms):
            raise InputError(f"frame start must be a finite number of ms, got {start_ms!r}")
        start = self._sample_at(start_ms)
        stop = start + self.samples_per_frame
        self._forget_before(start)
        mix: np.ndarray | None = None
        for seg in self._segments:
            if seg.start >= stop:
                break
            lo, hi = max(start, seg.start), min(stop, seg.end)
            if lo >= hi:
                continue
            if mix is None:
                mix = np.zeros(self.samples_per_frame, dtype=np.int32)
            mix[lo - start : hi - start] += seg.pcm[lo - seg.start : hi - seg.start]
        if mix is None:
            return np.zeros(self.samples_per_frame, dtype=np.int16)
        return np.clip(mix, -32768, 32767).astype(np.int16)

    def _forget_before(self, sample: int) -> None:
        if sample <= self._played_until:
            return
        self._played_until = sample
        live: list[_Segment] = []
        for seg in self._segments:
            if seg.end <= sample:
                if self._played_end is None or seg.end > self._played_end:
                    self._played_end = seg.end
            else:
                live.append(seg)
        self._segments = live

    def ends_at_ms(self) -> float:
        """Media time just after the last scheduled sample (played or not), or ``-inf``."""
        ends = [seg.end for seg in self._segments]
        if self._played_end is not None:
            ends.append(self._played_end)
        return self._ms(max(ends)) if ends else float("-inf")

    def speaking_at(self, ms: float) -> bool:
        """Whether any scheduled (not yet forgotten) audio covers media time ``ms``."""
        sample = self._sample_at(ms)
        return any(seg.start <= sample < seg.end for seg in self._segments)

    @property
    def segment_count(self) -> int:
        """How many scheduled pieces are held (for memory checks and metrics)."""
        return len(self._segments)

    # -- validation --------------------------------------------------------------------------

    def _validate(self, audio: object) -> np.ndarray:
        if not isinstance(audio, SpeechAudio):
            raise InputError(f"expected SpeechAudio, got {type(audio).__name__}")
        pcm = audio.pcm
        if not isinstance(pcm, np.ndarray):
            raise InputError(f"reply audio must be a numpy int16 array, got {type(pcm).__name__}")
        if pcm.dtype != np.int16:
            raise InputError(
                f"reply audio must be int16 PCM, got dtype {pcm.dtype}; "
                "convert float audio in -1..1 with models.audio.to_int16"
            )
        if pcm.ndim != 1:
            raise InputError(
                f"reply audio must be mono (a 1-D array), got shape {pcm.shape}; "
                "mix channels down first"
            )
        rate = audio.sample_rate_hz
        if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or not (
            MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ
        ):
            raise InputError(
                f"reply audio sample rate must be an integer from {MIN_INPUT_RATE_HZ} to "
                f"{MAX_INPUT_RATE_HZ} Hz, got {rate!r}"
            )
        pts = audio.pts_ms
        if isinstance(pts, bool) or not isinstance(pts, numbers.Real) or not math.isfinite(pts):
            raise InputError(
                f"reply audio pts_ms must be a finite number of ms, got {audio.pts_ms!r}"
            )
        return pcm
