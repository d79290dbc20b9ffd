"""The renderer replica: the media node that hosts many live sessions.

One replica per GPU (or a configured number on a CPU machine). It owns, for each session, the
conductor (VAD and endpointing, rails, chunking, barge-in), the animator and a slot in the
batched face renderer; the heavy shared models (ASR, LLM, TTS, Knowledge) are reached through
whatever implementations it is given: Serve handles in the cluster
(:mod:`deployments.remote`), in-process models in tests and scripts.

Capacity is enforced here, not by the router: a full or draining replica refuses new sessions
with :class:`~models.errors.ClusterFull`. Conversation history and turn timings go to the
SessionStore after every turn, so a session can be resumed on another replica. Each replica
beats in the SessionStore and closes, as ``'lost'``, the sessions of replicas that stopped
beating and whose clients never resumed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from configs.loader import load_persona
from configs.schema import AppConfig
from deployments.conductor import Conductor
from deployments.live_session import LiveSession, PersonaKit, WireEvent
from deployments.media.encode import EncoderPool
from deployments.metrics import MetricsSink
from deployments.render_loop import RenderLoop
from deployments.services import ConversationServices, knowledge_base_for
from deployments.session_store import SessionStore, TurnRecord, wall_ms
from deployments.timing import stage_latencies
from models.animate.animator import Animator
from models.asr.stream import StreamingASR
from models.clock import MediaClock
from models.errors import ClusterFull, InputError, SessionNotFound
from models.frames import TurnEnd
from models.guardrails.rails import Rails
from models.knowledge.base import Embedder, KnowledgeStore
from models.llm.base import LLM
from models.render.base import FaceRenderer
from models.tts.base import TTS

log = logging.getLogger(__name__)
SWEEP_INTERVAL_S = 5.0
RENDERER_HEARTBEAT_S = 2.0
"""How often a renderer records in the session store that it is alive."""
REAP_INTERVAL_S = 10.0
"""How often a renderer looks for the sessions of dead renderers."""
ORPHAN_AFTER_S = 15.0
"""A renderer silent this long is dead: its active sessions become ``'lost'``."""


class Renderer:
    """Hosts sessions. Every public method is a coroutine (or async generator) so a Serve
    replica can run many sessions' calls concurrently on its event loop."""

    heartbeat_s: float = RENDERER_HEARTBEAT_S
    reap_interval_s: float = REAP_INTERVAL_S
    orphan_after_s: float = ORPHAN_AFTER_S

    def __init__(
        self,
        config: AppConfig,
        *,
        replica_id: str,
        asr: StreamingASR,
        llm: LLM,
        tts: TTS,
        knowledge: KnowledgeStore,
        embedder: Embedder | None,
        session_store: SessionStore,
        face: Callable[[], FaceRenderer] | None = None,
        metrics: MetricsSink | None = None,
        mint: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.replica_id = replica_id
        self.capacity = config.deployments.renderer.sessions_per_replica or 8
        self.asr, self.llm, self.tts, self.knowledge = asr, llm, tts, knowledge
        self.session_store = session_store
        self.metrics = metrics or MetricsSink()
        self._mint = mint or (lambda: f"{replica_id}.{uuid.uuid4().hex}")
        self._kits = {name: self._kit(name, embedder) for name in config.personas}
        self._face_factory = face
        fps = config.models.render.fps
        self._loop = RenderLoop(self._make_face, fps, lambda: list(self.sessions.values()),
                                self.metrics, lead_ms=1000.0 / fps)
        self.sessions: dict[str, LiveSession] = {}
        self._reserved = 0
        webrtc = config.cluster.webrtc
        self.encoders = EncoderPool(webrtc.encoder_processes, fps=fps,
                                    bitrate_kbps=webrtc.video_bitrate_kbps) \
            if webrtc.encoder_processes > 0 and face is not None else None
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None

    def _kit(self, name: str, embedder: Embedder | None) -> PersonaKit:
        persona = load_persona(name)
        return PersonaKit(persona, knowledge_base_for(self.config, persona),
                          Rails(persona, embedder))

    def _make_face(self) -> FaceRenderer:
        if self._face_factory is None:
            raise InputError("this renderer has no face renderer; create sessions with "
                             "video off")
        face = self._face_factory()
        from models.render.pack import load_pack

        packs: dict[str, int] = {}
        for kit in self._kits.values():
            avatar = kit.persona.avatar
            if avatar not in packs:
                packs[avatar] = face.add_avatar(load_pack(avatar))
            kit.avatar_slot = packs[avatar]
        return face

    def warm_face(self) -> None:
        """Load the face renderer and its avatars now (seconds) instead of at the first video
        session. Does nothing on a renderer without one."""
        if self._face_factory is not None:
            self._loop.face()

    def _start_background(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._loop.run(), name="render-loop"),
                           asyncio.create_task(self._sweep(), name="idle-sweeper")]
            self.start_heartbeat()
            if self.encoders is not None:  # ready before the first offer arrives
                self._tasks.append(asyncio.create_task(self._start_encoders()))

    async def _start_encoders(self) -> None:
        assert self.encoders is not None
        try:
            await self.encoders.start()
        except Exception as exc:  # the first offer tries again and reports it
            log.warning("video encoder processes did not start: %s", exc)

    # --- sessions ---------------------------------------------------------------------------

    async def create_session(self, persona: str | None = None, video: bool = True,
                             resume: str | None = None) -> dict[str, object]:
        """Open a session (refuses with :class:`ClusterFull` when full or draining).

        ``resume`` is the id of an earlier session of the same tenant (a reconnect after its
        renderer died): its committed history seeds the new session's conversation.
        """
        if resume is not None and resume in self.sessions:
            await self.close_session(resume)  # a reconnect replaces its old live session
        if self.draining:
            self.metrics.rejection("draining")
            raise ClusterFull(f"renderer {self.replica_id} is draining", "draining")
        if len(self.sessions) + self._reserved >= self.capacity:
            self.metrics.rejection("full")
            raise ClusterFull(f"renderer {self.replica_id} hosts {self.capacity} sessions, "
                              "its capacity", "full")
        name = persona or self.config.persona
        kit = self._kits.get(name)
        if kit is None:
            self.metrics.rejection("bad_request")
            raise InputError(f"unknown persona {name!r}; this cluster serves "
                             f"{sorted(self._kits)}")
        if not isinstance(video, bool):
            raise InputError("video must be true or false")
        self._start_background()
        self._reserved += 1
        try:
            return await self._open(kit, video, resume)
        finally:
            self._reserved -= 1

    async def _open(self, kit: PersonaKit, video: bool, resume: str | None) -> dict[str, object]:
        history = []
        if resume is not None:
            record = await asyncio.to_thread(self.session_store.get_session, resume,
                                             kit.persona.tenant)
            if record is None:
                raise InputError(f"there is no session {resume!r} of tenant "
                                 f"{kit.persona.tenant!r} to resume")
            history = await asyncio.to_thread(self.session_store.history, resume,
                                              kit.persona.tenant,
                                              self.config.conversation.history_turns)
            await asyncio.to_thread(self.session_store.close_session, resume, kit.persona.tenant)
        if video:  # load the face renderer (and its avatar slots) once, off the loop
            await asyncio.to_thread(self._loop.face)
        sid = self._mint()
        clock = MediaClock()
        conv = self.config.conversation
        conductor = Conductor(
            asr=self.asr.open_session(clock, allowed_rates=conv.input_sample_rates_hz,
                                      max_chunk_ms=conv.max_audio_chunk_ms),
            llm=self.llm, tts=self.tts, store=self.knowledge, rails=kit.rails,
            persona=kit.persona, knowledge_base=kit.knowledge_base, config=conv, clock=clock,
            top_k=self.config.models.knowledge.top_k, history=history,
        )
        await asyncio.to_thread(self.session_store.create_session, sid, kit.persona.tenant,
                                kit.persona.name, self.replica_id)
        await conductor.start()
        animator = Animator(fps=self.config.models.render.fps, seed=len(self.sessions))
        session = LiveSession(sid, kit, conductor, animator, clock, video, self._turn_ended)
        session.start()
        self.sessions[sid] = session
        self.metrics.session_created()
        self._report()
        info = session.info()
        from deployments.media.ice import ice_servers

        info.update(greeting=kit.persona.greeting, renderer=self.replica_id,
                    ice_servers=ice_servers(self.config.cluster.webrtc, sid),
                    resumed_from=resume, history_turns=len(history) // 2)
        return info

    def _get(self, session_id: str) -> LiveSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"session {session_id!r} is not live on renderer "
                             f"{self.replica_id}; it ended or timed out: create a new one")
        return session

    async def send_text(self, session_id: str, text: str) -> int:
        session = self._get(session_id)
        session.touch()
        return await session.conductor.send_text(text)

    async def feed_audio(self, session_id: str, pcm: bytes, sample_rate_hz: int) -> int:
        return self._get(session_id).feed_pcm16(pcm, sample_rate_hz)

    async def interrupt(self, session_id: str) -> None:
        session = self._get(session_id)
        session.touch()
        await session.conductor.interrupt()

    async def events(self, session_id: str) -> AsyncIterator[WireEvent]:
        """The session's output events, until it closes."""
        async for item in self._get(session_id).subscribe():
            yield item

    async def hold(self, session_id: str) -> AsyncIterator[str]:
        """An open request for as long as the session lives: Serve does not stop a replica
        with ongoing requests before ``graceful_shutdown_timeout_s``."""
        session = self._get(session_id)
        yield session_id
        await session.closed.wait()

    async def connect(self, session_id: str, sdp: str, kind: str = "offer") -> dict[str, object]:
        """Answer the client's WebRTC offer: the avatar's audio and video go to it, its
        microphone and data channel come in (a new offer replaces the session's old peer)."""
        from deployments.media.ice import ice_servers
        from deployments.media.peer import MediaPeer

        session = self._get(session_id)
        if session.peer is not None:
            await session.peer.close()
            session.peer = None
        if self._face_factory is not None and not session.video:
            await asyncio.to_thread(self._loop.face)
            session.video = True
        servers = ice_servers(self.config.cluster.webrtc, session_id)
        peer = MediaPeer(session, servers, fps=self.config.models.render.fps,
                         encoders=self.encoders)
        try:
            answer = await peer.answer(sdp, kind)
        except BaseException:
            await peer.close()
            raise
        session.peer = peer
        session.touch()
        return dict(answer)

    async def session_info(self, session_id: str) -> dict[str, object]:
        return self._get(session_id).info()

    async def transcript(self, session_id: str) -> list[dict[str, object]]:
        """The session's committed turns, from the session store (its own tenant's only)."""
        session = self._get(session_id)
        turns = await asyncio.to_thread(self.session_store.turns, session_id, session.tenant)
        return [{"turn_id": t.turn_id, "user": t.user_text, "avatar": t.reply_text,
                 "refused": t.refused, "interrupted": t.interrupted,
                 "created_ms": t.created_ms} for t in turns]

    async def frame_jpeg(self, session_id: str) -> bytes:
        """The session's latest frame as JPEG (rendered now when the session has no video)."""
        session = self._get(session_id)
        if session.frame is None:
            await self._loop.render_once([session])
        assert session.frame is not None
        quality = self.config.models.render.jpeg_quality

        def encode() -> bytes:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(session.frame).save(buf, format="JPEG", quality=quality)
            return buf.getvalue()

        return await asyncio.to_thread(encode)

    async def close_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        await session.aclose()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.session_store.close_session, session_id,
                                    session.tenant)
        self._report()

    async def _turn_ended(self, session: LiveSession, event: TurnEnd, error: bool) -> None:
        outcome = ("error" if error else "interrupted" if event.interrupted
                   else "refused" if event.refused else "answered")
        self.metrics.turn(outcome)
        for stage, ms in stage_latencies(event.marks).items():
            self.metrics.stage_latency(stage, ms)
        if event.continued:
            return
        record = TurnRecord(session.session_id, event.turn_id, event.user_text, event.text,
                            event.refused, event.interrupted, dict(event.marks), wall_ms())
        try:
            await asyncio.to_thread(self.session_store.append_turn, record, session.tenant)
        except Exception as exc:  # the conversation goes on; the operator sees the log
            log.error("session %s: turn %d not stored: %s", session.session_id,
                      event.turn_id, exc)

    # --- replica ----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        timeout = self.config.conversation.session_idle_timeout_s
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL_S, timeout))
            for sid, session in list(self.sessions.items()):
                if session.idle_s() > timeout:
                    log.info("session %s idle for %.0f s: closed", sid, session.idle_s())
                    await self.close_session(sid)

    def start_heartbeat(self) -> None:
        """Beat and reap from now on, sessions or not (the replica calls this at start: an
        idle replica must still close the sessions a dead one left)."""
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._keep_alive(), name="heartbeat")

    async def _keep_alive(self) -> None:
        """Beat every ``heartbeat_s``; every ``reap_interval_s`` close as lost the sessions of
        renderers silent for ``orphan_after_s`` (any renderer's: the store is shared). A store
        error is logged and the loop goes on."""
        next_reap = time.monotonic()
        beating = True
        while True:
            try:
                await asyncio.to_thread(self.session_store.heartbeat, self.replica_id)
                if not beating:
                    log.info("renderer %s: heartbeats stored again", self.replica_id)
                beating = True
            except Exception as exc:
                if beating:
                    log.warning("renderer %s: heartbeat not stored: %s", self.replica_id, exc)
                beating = False
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + self.reap_interval_s
                await self._reap_orphans()
            await asyncio.sleep(self.heartbeat_s)

    async def _reap_orphans(self) -> None:
        try:
            lost = await asyncio.to_thread(self.session_store.reap_orphans,
                                           self.orphan_after_s * 1000.0)
        except Exception as exc:
            log.warning("renderer %s: looking for orphaned sessions failed: %s",
                        self.replica_id, exc)
            return
        if lost:
            self.metrics.sessions_lost(len(lost))
            log.warning("closed %d session(s) whose renderer stopped beating over %.0f s "
                        "ago: %s", len(lost), self.orphan_after_s,
                        ", ".join(f"{tenant}/{sid}" for tenant, sid in lost[:10]))

    def _report(self) -> None:
        self.metrics.sessions(len(self.sessions), self.capacity)

    async def drain(self) -> dict[str, object]:
        """Stop taking new sessions; live ones go on until they end."""
        self.draining = True
        return self.stats()

    def stats(self) -> dict[str, object]:
        return {
            "replica": self.replica_id, "sessions": len(self.sessions),
            "capacity": self.capacity, "draining": self.draining,
            "video_sessions": sum(1 for s in self.sessions.values() if s.video),
            "frames_rendered": self._loop.frames_rendered,
            "frames_dropped": self._loop.frames_dropped,
            "encoder_processes": [] if self.encoders is None
            else self.encoders.sessions_per_process(),
        }

    def record_routing_stats(self) -> dict[str, object]:
        """Load report for :class:`cluster.routing.SessionPinningRouter` (every second);
        it refreshes the session gauges too."""
        self._report()
        capacity = 0 if self.draining else self.capacity
        return {"sessions": len(self.sessions) + self._reserved, "capacity": capacity,
                "recorded_at": time.time()}

    async def aclose(self) -> None:
        for task in [*self._tasks, *([self._heartbeat] if self._heartbeat else [])]:
            task.cancel()
        for sid in list(self.sessions):
            await self.close_session(sid)
        if self.encoders is not None:
            await self.encoders.shutdown()


def renderer_from_services(
    services: ConversationServices,
    session_store: SessionStore,
    *,
    replica_id: str = "local",
    video: bool = True,
    metrics: MetricsSink | None = None,
    config: AppConfig | None = None,
) -> Renderer:
    """A renderer on in-process models (one process, no cluster): scripts and tests.
    ``config`` replaces the services' own for the renderer (WebRTC and capacity settings)."""
    config = config or services.config
    face = None
    if video:
        render = config.models.render

        def face() -> FaceRenderer:
            from models.render.offline import create_renderer

            return create_renderer(render.size_px, resolve_device(render.device))

    return Renderer(config, replica_id=replica_id, asr=services.asr, llm=services.llm,
                    tts=services.tts, knowledge=services.store, embedder=services.embedder,
                    session_store=session_store, face=face, metrics=metrics)


def resolve_device(setting: str) -> str:
    """cpu or cuda for a render.device setting (auto: cuda when this process has a GPU)."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
