"""The renderer replica's frame clock, in virtual time: batching, dropped ticks, metrics."""

from __future__ import annotations

import asyncio
import itertools
import types
from collections.abc import Sequence

import numpy as np
import pytest

from configs.schema import KnowledgeBaseConfig, PersonaConfig
from deployments import render_loop as render_loop_module
from deployments.live_session import LiveSession, PersonaKit
from deployments.metrics import MetricsSink
from deployments.render_loop import RenderLoop
from models.animate.animator import Animator
from models.animate.params import NUM_PARAMS
from models.clock import ManualClock
from models.frames import StateChange, TurnEnd
from models.guardrails.rails import Rails
from models.render.base import FaceRenderer
from models.render.pack import AvatarPack

pytestmark = pytest.mark.unit

FPS = 8  # a 125 ms interval: every time below is exact in binary floating point
INTERVAL_S = 1.0 / FPS
SIZE_PX = 8

PERSONA = PersonaConfig(name="desk", display_name="Desk", tenant="t1", knowledge_base="kb1",
                        greeting="Hi", system_prompt="You are a front desk.")
KB = KnowledgeBaseConfig(name="kb1", tenant="t1", path="unused")


class StopLoop(Exception):
    """Raised by the virtual sleep to end :meth:`RenderLoop.run` after enough renders."""


class VirtualTime:
    """One virtual timeline: the loop's monotonic clock and every session's media clock."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.clocks: list[ManualClock] = []
        self.sleeps: list[float] = []
        self.stop_after_renders: int | None = None
        self.face: FakeFace | None = None

    def monotonic(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds
        for clock in self.clocks:
            clock.advance(1000.0 * seconds)

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0.0
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)
        if self.face is not None and self.stop_after_renders is not None \
                and len(self.face.calls) >= self.stop_after_renders:
            raise StopLoop


class FakeFace(FaceRenderer):
    """Black frames; each render takes ``costs_s[i]`` of virtual time (an overrun knob)."""

    size_px = SIZE_PX
    device = "cpu"

    def __init__(self, time: VirtualTime, costs_s: Sequence[float] = ()) -> None:
        self.time = time
        self.costs_s = list(costs_s)
        self.calls: list[tuple[list[int], np.ndarray, float]] = []

    def add_avatar(self, pack: AvatarPack) -> int:
        return 0

    def render(self, avatar_slots: Sequence[int], params: np.ndarray) -> np.ndarray:
        self.calls.append((list(avatar_slots), params.copy(), self.time.now_s))
        if len(self.calls) <= len(self.costs_s):
            self.time.advance(self.costs_s[len(self.calls) - 1])
        return np.zeros((len(avatar_slots), self.size_px, self.size_px, 3), dtype=np.uint8)


class IdleConductor:
    """The render loop never talks to the conductor."""

    state = "idle"


async def _on_turn_end(session: LiveSession, event: TurnEnd, error: bool) -> None:
    return None


def make_session(time: VirtualTime, sid: str, slot: int, *, video: bool = True,
                 start_ms: float = 0.0, seed: int = 0) -> LiveSession:
    clock = ManualClock(start_ms)
    time.clocks.append(clock)
    kit = PersonaKit(PERSONA, KB, Rails(PERSONA), avatar_slot=slot)
    return LiveSession(sid, kit, IdleConductor(), Animator(fps=FPS, seed=seed),  # type: ignore[arg-type]
                       clock, video, _on_turn_end)


@pytest.fixture
def vtime(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    time = VirtualTime()
    fake_asyncio = types.SimpleNamespace(sleep=time.sleep, to_thread=asyncio.to_thread)
    monkeypatch.setattr(render_loop_module, "asyncio", fake_asyncio)
    return time


def make_loop(time: VirtualTime, face: FakeFace, sessions: list[LiveSession],
              metrics: MetricsSink) -> RenderLoop:
    time.face = face
    return RenderLoop(lambda: face, FPS, lambda: sessions, metrics, monotonic=time.monotonic)


async def test_one_batched_render_per_tick_for_every_video_session(vtime: VirtualTime) -> None:
    a = make_session(vtime, "a", slot=3)
    b = make_session(vtime, "b", slot=5)
    audio_only = make_session(vtime, "c", slot=7, video=False)
    closed = make_session(vtime, "d", slot=9)
    closed.closed.set()
    face, metrics = FakeFace(vtime), MetricsSink()
    loop = make_loop(vtime, face, [a, audio_only, b, closed], metrics)
    vtime.stop_after_renders = 4
    with pytest.raises(StopLoop):
        await loop.run()
    assert [slots for slots, _, _ in face.calls] == [[3, 5]] * 4
    assert [t for _, _, t in face.calls] == [0.0, 0.125, 0.25, 0.375]
    for session in (a, b):
        assert session.frame is not None and session.frame.shape == (SIZE_PX, SIZE_PX, 3)
        assert session.frame_pts_ms == 375.0
    assert audio_only.frame is None and closed.frame is None
    assert loop.frames_rendered == 8 and loop.frames_dropped == 0
    assert metrics.counters["frames_rendered"] == 8 and metrics.counters["frames_dropped"] == 0
    assert metrics.latencies["render_batch"] == [0.0] * 4


async def test_an_overrun_drops_the_missed_ticks_instead_of_bursting(vtime: VirtualTime) -> None:
    sessions = [make_session(vtime, "a", slot=0), make_session(vtime, "b", slot=1)]
    # the second step takes 312.5 ms: the ticks at 250 and 375 ms pass while it renders
    face, metrics = FakeFace(vtime, costs_s=[0.0, 0.3125, 0.0, 0.0]), MetricsSink()
    loop = make_loop(vtime, face, sessions, metrics)
    vtime.stop_after_renders = 4
    with pytest.raises(StopLoop):
        await loop.run()
    starts = [t for _, _, t in face.calls]
    assert starts == [0.0, 0.125, 0.5, 0.625]  # back on the tick grid, no catch-up burst
    assert all(later - earlier >= INTERVAL_S for earlier, later in itertools.pairwise(starts))
    assert loop.frames_dropped == 2 * len(sessions)
    assert loop.frames_rendered == 4 * len(sessions)
    assert metrics.counters["frames_dropped"] == 4
    assert metrics.counters["frames_rendered"] == 8
    assert metrics.latencies["render_batch"] == [0.0, 312.5, 0.0, 0.0]
    assert all(s.frame_pts_ms == 625.0 for s in sessions)


async def test_a_long_stall_drops_every_tick_it_covered(vtime: VirtualTime) -> None:
    session = make_session(vtime, "a", slot=0)
    face, metrics = FakeFace(vtime, costs_s=[1.0]), MetricsSink()  # eight intervals
    loop = make_loop(vtime, face, [session], metrics)
    vtime.stop_after_renders = 2
    with pytest.raises(StopLoop):
        await loop.run()
    assert [t for _, _, t in face.calls] == [0.0, 1.125]
    assert loop.frames_dropped == 8 and metrics.counters["frames_dropped"] == 8


async def test_no_render_while_no_session_wants_video(vtime: VirtualTime) -> None:
    sessions = [make_session(vtime, "voice-only", slot=0, video=False)]
    face, metrics = FakeFace(vtime), MetricsSink()
    loop = make_loop(vtime, face, sessions, metrics)
    task = asyncio.create_task(loop.run())
    while len(vtime.sleeps) < 5:
        await asyncio.sleep(0)
    assert face.calls == [] and vtime.sleeps[:5] == [INTERVAL_S] * 5
    assert metrics.counters["frames_rendered"] == 0

    joined_at = vtime.now_s
    sessions.append(make_session(vtime, "video", slot=4))
    vtime.stop_after_renders = 2
    with pytest.raises(StopLoop):
        await task
    assert [slots for slots, _, _ in face.calls] == [[4], [4]]
    assert face.calls[0][2] >= joined_at
    assert face.calls[1][2] - face.calls[0][2] == INTERVAL_S


async def test_each_session_is_sampled_at_its_own_media_clock(vtime: VirtualTime) -> None:
    early = make_session(vtime, "early", slot=0, start_ms=10_000.0, seed=1)
    late = make_session(vtime, "late", slot=1, start_ms=0.0, seed=2)
    early.animator.on_event(StateChange("speaking", 9_000.0))
    face, metrics = FakeFace(vtime, costs_s=[0.004]), MetricsSink()
    loop = RenderLoop(lambda: face, FPS, lambda: [early, late], metrics,
                      monotonic=vtime.monotonic)
    step_ms = await loop.render_once([early, late])
    assert step_ms == pytest.approx(4.0)
    [(slots, params, _)] = face.calls
    assert slots == [0, 1] and params.shape == (2, NUM_PARAMS)
    assert early.frame_pts_ms == 10_000.0 and late.frame_pts_ms == 0.0
    np.testing.assert_array_equal(params[0], early.animator.sample(np.array([10_000.0]))[0])
    np.testing.assert_array_equal(params[1], late.animator.sample(np.array([0.0]))[0])
    assert not np.array_equal(params[0], params[1])
    assert metrics.latencies["render_batch"] == [pytest.approx(4.0)]


async def test_the_face_renderer_is_built_once_and_only_when_needed(vtime: VirtualTime) -> None:
    built: list[FakeFace] = []

    def factory() -> FakeFace:
        built.append(FakeFace(vtime))
        return built[-1]

    session = make_session(vtime, "a", slot=0)
    loop = RenderLoop(factory, FPS, lambda: [session], MetricsSink(), monotonic=vtime.monotonic)
    assert built == []
    await loop.render_once([session])
    await loop.render_once([session])
    assert len(built) == 1 and len(built[0].calls) == 2


async def test_frames_are_rendered_ahead_and_the_nearest_one_is_shown(vtime: VirtualTime) -> None:
    session = make_session(vtime, "a", slot=0)
    face = FakeFace(vtime)
    loop = RenderLoop(lambda: face, FPS, lambda: [session], MetricsSink(),
                      monotonic=vtime.monotonic, lead_ms=125.0)
    await loop.render_once([session])
    first = session.frame
    assert session.frame_pts_ms == session.clock.now_ms() + 125.0
    assert session.frame_near(session.clock.now_ms()) is first
    session.add_frame(np.ones_like(first), session.frame_pts_ms + 125.0)
    assert session.frame_near(session.frame_pts_ms - 10.0) is session.frame
    assert session.frame_near(session.frame_pts_ms - 100.0) is first
